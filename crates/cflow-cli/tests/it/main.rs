//! Integration tests of the `cflow` binary: every test runs the built binary as a real process
//! against a real server (itself started as `cflow up` on a free port with a temporary data
//! directory) and asserts on exit codes, output and the state left behind.

mod artifacts;
mod audit;
mod bench_tasks;
mod claude_hooks;
mod claude_mcp;
mod config;
mod cost;
mod crash;
mod crash_orch;
mod errors;
mod harness;
mod hooks_cli;
mod keys;
mod llm;
mod mcp;
mod mcp_http;
mod mcp_python;
mod memory;
mod orchestration;
mod secrets;
mod up;
mod workflow;
