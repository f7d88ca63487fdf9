//! `cflow-sandbox`: the sandbox launcher on its own (the `cflow` binary is the same launcher when
//! its first argument is `__sandbox-exec`). Not meant to be run by hand: the supervisor passes a
//! JSON [`cflow_sandbox::LaunchSpec`]. `cflow-sandbox mcp-bridge --socket PATH` is the stdio
//! bridge of [`cflow_sandbox::bridge`], as `cflow mcp-bridge` is.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == cflow_sandbox::bridge::BRIDGE_ARG)
    {
        std::process::exit(cflow_sandbox::bridge::bridge_main(&args[2..]));
    }
    std::process::exit(cflow_sandbox::launch::launcher_main(&args));
}
