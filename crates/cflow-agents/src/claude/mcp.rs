//! cflow's agent tools for a `claude-code` attempt, over MCP: the server-side tools of the `llm`
//! driver (memory_get, memory_put, memory_search, send_message, delegate_task), served by the
//! driver for one attempt and called by Claude Code as `mcp__cflow__<tool>`.
//!
//! The driver binds a Unix socket in the agent's home (a writable path of the run, so the
//! sandboxed CLI can reach it) and passes Claude Code `--mcp-config` naming a stdio server that
//! is the sandbox launcher binary run as `mcp-bridge --socket PATH` (a byte pump, see
//! `cflow_sandbox::bridge`). Each call is forwarded to the job's host as
//! [`HostCall::Tool`]: it is the task's agent that acts, fenced by the attempt's epoch, with the
//! topology, budgets, tenancy and audit enforced by the server. A refusal comes back to the
//! model as a tool error (`isError: true`) with the server's message, never as a protocol error.
//!
//! The server lives exactly as long as the attempt: [`Serving::close`] stops the accept loop and
//! every session and removes the socket before the driver returns.

use crate::host::{HostCall, HostError, HostHandle, SERVER_TOOLS};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The server's name in the MCP configuration: Claude Code calls its tools `mcp__cflow__<tool>`.
pub(crate) const SERVER_NAME: &str = "cflow";

/// What Claude Code calls a server tool.
pub(crate) fn tool_name(tool: &str) -> String {
    format!("mcp__{SERVER_NAME}__{tool}")
}

/// The server tools a task may use: all of them when it lists no `allowed_tools`; else those it
/// names as `mcp__cflow__<tool>` (all of them for `mcp__cflow` or `mcp__cflow__*`), as the `llm`
/// driver offers only the server tools a restricting list names.
pub(crate) fn allowed(allowed_tools: &[String]) -> Vec<&'static str> {
    if allowed_tools.is_empty() {
        return SERVER_TOOLS.to_vec();
    }
    let whole = format!("mcp__{SERVER_NAME}");
    let star = format!("mcp__{SERVER_NAME}__*");
    if allowed_tools.iter().any(|a| *a == whole || *a == star) {
        return SERVER_TOOLS.to_vec();
    }
    SERVER_TOOLS
        .into_iter()
        .filter(|t| allowed_tools.iter().any(|a| *a == tool_name(t)))
        .collect()
}

/// What the sandboxed CLI runs as its `cflow` MCP server: a program and the arguments that come
/// before the socket's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bridge {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The Python fallback of `mcp-bridge`: the same byte pump (stdin → socket, socket → stdout),
/// for a host where the cflow binary sits where the sandbox hides it (under /tmp, /home, …).
const PYTHON_BRIDGE: &str = "import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def pump_in():
    try:
        while True:
            b = os.read(0, 65536)
            if not b:
                break
            s.sendall(b)
    finally:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
threading.Thread(target=pump_in, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b:
        break
    os.write(1, b)
";

impl Bridge {
    /// `PROGRAM mcp-bridge --socket PATH`: the cflow (or cflow-sandbox) binary.
    pub(crate) fn launcher(program: PathBuf) -> Self {
        Self {
            program,
            args: vec![
                cflow_sandbox::bridge::BRIDGE_ARG.to_string(),
                "--socket".to_string(),
            ],
        }
    }

    /// `python3 -c <the pump> PATH`.
    pub(crate) fn python(python: PathBuf) -> Self {
        Self {
            program: python,
            args: vec!["-c".to_string(), PYTHON_BRIDGE.to_string()],
        }
    }
}

/// The `--mcp-config` JSON: one stdio server, the bridge to `socket`.
pub(crate) fn config_json(bridge: &Bridge, socket: &Path) -> String {
    let mut args = bridge.args.clone();
    args.push(socket.display().to_string());
    json!({"mcpServers": {SERVER_NAME: {
        "type": "stdio",
        "command": bridge.program.display().to_string(),
        "args": args,
        "env": {},
    }}})
    .to_string()
}

/// Where an attempt's socket goes in the agent's home: unique per process and attempt, so two
/// attempts of one agent never share one.
pub(crate) fn socket_path(home: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    home.join(format!(".cflow-mcp-{}-{n}.sock", std::process::id()))
}

/// A running server: the accept loop of one attempt.
pub(crate) struct Serving {
    socket: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Binds `socket` (handed to `owner`, the sandbox's user, so that the command may connect)
    /// and serves `tools` as the job's agent through `host`. A `Lost` answer cancels `run`: the
    /// attempt is no longer this worker's.
    pub(crate) fn start(
        socket: PathBuf,
        owner: Option<(u32, u32)>,
        host: HostHandle,
        tools: &[&'static str],
        run: CancellationToken,
    ) -> std::io::Result<Self> {
        // A file left at that name (by the agent, which may write its home) is replaced. The
        // name is never followed: removal and `lchown` act on the entry itself.
        let _ = std::fs::remove_file(&socket);
        let listener = cflow_sandbox::bridge::bind(&socket)?;
        if let Some((uid, gid)) = owner
            && let Err(e) = std::os::unix::fs::lchown(&socket, Some(uid), Some(gid))
        {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let handler = AgentTools {
            host,
            tools: Arc::new(definitions(tools)),
            run,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, handler, stop.clone()));
        Ok(Self { socket, stop, task })
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ends every session and the accept loop, and removes the socket.
    pub(crate) async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    handler: AgentTools,
    stop: CancellationToken,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (handler, ct) = (handler.clone(), stop.child_token());
                    sessions.spawn(async move {
                        match handler.serve_with_ct(stream, ct).await {
                            Ok(service) => {
                                let _ = service.waiting().await;
                            }
                            Err(e) => tracing::debug!(error = %e, "an MCP session did not start"),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: the CLI's next connection may succeed.
                    tracing::warn!(error = %e, "the claude-code MCP socket could not accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
}

/// The MCP definitions of `tools`, from the `llm` driver's definitions of the server tools.
fn definitions(tools: &[&'static str]) -> Vec<Tool> {
    crate::llm::server_tools::server_tool_defs()
        .into_iter()
        .filter(|d| tools.contains(&d.name.as_str()))
        .map(|d| {
            let read_only = matches!(d.name.as_str(), "memory_get" | "memory_search");
            let schema = match d.input_schema {
                Value::Object(o) => o,
                _ => serde_json::Map::new(),
            };
            Tool::new(d.name, d.description, schema)
                .with_annotations(ToolAnnotations::new().read_only(read_only))
        })
        .collect()
}

/// One attempt's tools, as its agent.
#[derive(Clone)]
struct AgentTools {
    host: HostHandle,
    tools: Arc<Vec<Tool>>,
    run: CancellationToken,
}

fn tool_error(message: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(message.into())]).into())
}

impl ServerHandler for AgentTools {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "cflow's tools for this agent: the swarm's shared memory (memory_get, \
                 memory_put, memory_search), messages to peers (send_message) and delegation \
                 (delegate_task). The server decides what this agent may do; a refusal says why.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if !self.tools.iter().any(|t| t.name == name) {
            let have: Vec<&str> = self.tools.iter().map(|t| t.name.as_ref()).collect();
            return tool_error(format!(
                "there is no tool named '{name}' in this run; the tools are: {}",
                have.join(", ")
            ));
        }
        let input = Value::Object(request.arguments.unwrap_or_default());
        let call = self.host.call(HostCall::Tool {
            name: name.clone(),
            input,
        });
        let answer = tokio::select! {
            answer = call => answer,
            () = self.run.cancelled() => {
                return tool_error("the attempt is ending: the call was not completed");
            }
        };
        match answer {
            Ok(Value::String(s)) => Ok(CallToolResult::success(vec![ContentBlock::text(s)]).into()),
            Ok(v) => Ok(CallToolResult::success(vec![ContentBlock::text(v.to_string())]).into()),
            Err(HostError::Refused(m)) => tool_error(m),
            Err(HostError::Lost(m)) => {
                self.run.cancel();
                tool_error(format!(
                    "the attempt is no longer this worker's ({m}); it is being stopped"
                ))
            }
            Err(HostError::Unavailable(m)) => tool_error(format!(
                "the server is unavailable ({m}): try again later, or go on without this tool"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricting_list_names_the_server_tools_it_allows() {
        assert_eq!(allowed(&[]), SERVER_TOOLS.to_vec());
        assert_eq!(allowed(&["Write".into()]), Vec::<&str>::new());
        assert_eq!(
            allowed(&["Write".into(), "mcp__cflow__memory_get".into()]),
            vec!["memory_get"]
        );
        assert_eq!(allowed(&["mcp__cflow".into()]), SERVER_TOOLS.to_vec());
        assert_eq!(allowed(&["mcp__cflow__*".into()]), SERVER_TOOLS.to_vec());
    }

    #[test]
    fn every_server_tool_has_a_definition() {
        let defs = definitions(&SERVER_TOOLS);
        let names: Vec<&str> = defs.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, SERVER_TOOLS);
        assert!(
            defs.iter()
                .all(|t| t.input_schema.get("type") == Some(&json!("object")))
        );
    }

    #[test]
    fn the_config_names_the_bridge_and_the_socket() {
        let socket = Path::new("/data/agents/a/.cflow-mcp-1-1.sock");
        let c: Value = serde_json::from_str(&config_json(
            &Bridge::launcher(PathBuf::from("/usr/local/bin/cflow")),
            socket,
        ))
        .unwrap();
        let s = &c["mcpServers"]["cflow"];
        assert_eq!(s["command"], "/usr/local/bin/cflow");
        assert_eq!(
            s["args"],
            json!([
                "mcp-bridge",
                "--socket",
                "/data/agents/a/.cflow-mcp-1-1.sock"
            ])
        );
        let c: Value = serde_json::from_str(&config_json(
            &Bridge::python(PathBuf::from("/usr/bin/python3")),
            socket,
        ))
        .unwrap();
        let s = &c["mcpServers"]["cflow"];
        assert_eq!(s["command"], "/usr/bin/python3");
        assert_eq!(s["args"][0], "-c");
        assert_eq!(s["args"][2], "/data/agents/a/.cflow-mcp-1-1.sock");
    }
}
