//! The built-in tools of cflow's agent loop that run on the worker: file tools confined to the
//! job's workspace and `run_command` in the sandbox. (The server-side tools — memory, messages,
//! delegation — go through the job's [`Host`](crate::host::Host).)
//!
//! - [`workbench`]: [`Workbench`], the job's workspace and the tools on it (see its docs for
//!   the confinement invariant).
//! - [`fs`]: the workspace-confined file operations behind the file tools.
//! - `file_tools` (private): the file tools' input parsing and output, on top of [`fs`].

mod file_tools;
pub mod fs;
pub mod workbench;

pub use workbench::{Workbench, WorkbenchEnd};

use crate::driver::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The most bytes of one tool's output that go back to the model; the rest is cut and the cut
/// is said in the output.
pub const TOOL_OUTPUT_CAP: usize = 32 * 1024;

/// What one tool call returned, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    /// The call failed (bad input, a missing file, a command that could not start); the content
    /// says why and what to do. A command that ran and exited non-zero is not an error.
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: false,
        }
    }

    pub fn error(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: true,
        }
    }
}

/// Tools a model loop can call: their definitions for the model, and their execution.
pub trait Toolbox: Send + Sync {
    /// The tools' definitions (name, description, JSON schema), in a stable order (they are part
    /// of the cached prompt prefix).
    fn defs(&self) -> Vec<cflow_llm::ToolDef>;

    /// Runs one call. Unknown tools and bad input come back as [`ToolOutput::error`], never as
    /// a panic; output is capped at [`TOOL_OUTPUT_CAP`].
    fn call<'a>(
        &'a self,
        name: &'a str,
        input: &'a Value,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, ToolOutput>;
}
