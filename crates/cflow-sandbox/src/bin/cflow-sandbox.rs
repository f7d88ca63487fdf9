//! `cflow-sandbox`: the sandbox launcher on its own (the `cflow` binary is the same launcher when
//! its first argument is `__sandbox-exec`). Not meant to be run by hand: the supervisor passes a
//! JSON [`cflow_sandbox::LaunchSpec`].

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    std::process::exit(cflow_sandbox::launch::launcher_main(&args));
}
