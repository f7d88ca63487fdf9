"""A real MCP client for cflow: the official MCP Python SDK (PyPI `mcp`) drives cflow's MCP server
over stdio (`cflow mcp`) or streamable HTTP (`<server>/mcp`), calls every tool in an end-to-end
flow, reads a task's logs resource and provokes the error cases. It prints what it saw as one
JSON report on stdout; the Rust test crates/cflow-cli/tests/it/mcp_python.rs judges it.

    MCP_TEST_TOKEN=… MCP_TEST_VIEWER_TOKEN=… MCP_TEST_OTHER_TOKEN=… \
        python mcp_client.py --transport stdio|http --server URL --cflow BIN

The tokens come from the environment (not the command line, where any process could read them):
MCP_TEST_TOKEN is an admin key of tenant A, MCP_TEST_VIEWER_TOKEN a viewer key of tenant A and
MCP_TEST_OTHER_TOKEN an admin key of tenant B. The script asserts nothing itself beyond what it needs
to go on (an id to use next): every outcome goes into the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


class Driver:
    """One MCP session, recording every tool call it makes in the report."""

    def __init__(self, session: ClientSession, report: dict[str, Any], who: str) -> None:
        self.session = session
        self.report = report
        self.who = who

    async def raw(self, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """The call's outcome: a result (ok or tool error) or a protocol error."""
        try:
            r = await self.session.call_tool(tool, args, **kw)
        except MCPError as e:
            out = {"kind": "protocol_error", "code": e.code, "message": e.message}
        else:
            text = text_of(r)
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            out = {"kind": "tool_error" if r.is_error else "ok", "text": text, "json": value}
        self.report["calls"].append({"who": self.who, "tool": tool, "kind": out["kind"]})
        return out

    async def ok(self, tool: str, args: dict[str, Any], **kw: Any) -> Any:
        out = await self.raw(tool, args, **kw)
        if out["kind"] != "ok":
            raise RuntimeError(f"{self.who}: {tool}({json.dumps(args)}) failed: {out}")
        return out["json"]


FINAL = ("succeeded", "failed", "cancelled", "timed_out")


async def settle(progress: list[dict[str, Any]]) -> None:
    """Waits (5 s at most) for the progress callbacks still running: the SDK runs each in a task
    of its own, so the last one may run just after the call's answer arrived."""
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        if any((p["message"] or "").endswith(FINAL) for p in progress):
            return
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def connect(transport: str, server: str, cflow: str, token: str):
    """An initialized session as the holder of `token`."""
    if transport == "stdio":
        # A working directory without .cflow/admin.token: the token is exactly CFLOW_TOKEN.
        with tempfile.TemporaryDirectory() as cwd:
            params = StdioServerParameters(
                command=cflow,
                args=["mcp"],
                env={"CFLOW_SERVER": server, "CFLOW_TOKEN": token},
                cwd=cwd,
            )
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    yield session, init
    else:
        headers = {"Authorization": f"Bearer {token}"}
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(f"{server}/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    yield session, init


async def flow(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "transport": args.transport,
        "sdk_version": importlib.metadata.version("mcp"),
        "calls": [],
        "steps": {},
        "errors": {},
    }
    steps = report["steps"]
    errors = report["errors"]

    # Tenant B makes a swarm and a task that tenant A must not see.
    async with connect(args.transport, args.server, args.cflow, args.other_token) as (s, _):
        other = Driver(s, report, "other")
        o_swarm = await other.ok("swarm_init", {"name": f"globex-{args.transport}", "topology": "star"})
        o_task = await other.ok(
            "task_submit", {"tasks": [{"swarm": o_swarm["id"], "spec": {"command": "echo b"}}]}
        )
        other_swarm_id = o_swarm["id"]
        other_task_id = o_task["tasks"][0]["id"]

    async with connect(args.transport, args.server, args.cflow, args.token) as (s, init):
        a = Driver(s, report, "admin")
        report["server_info"] = {
            "name": init.server_info.name,
            "version": init.server_info.version,
            "protocol_version": init.protocol_version,
            "instructions": bool(init.instructions),
        }

        tools = (await s.list_tools()).tools
        report["tools"] = [
            {
                "name": t.name,
                "description": t.description,
                "schema_type": t.input_schema.get("type"),
                "required": t.input_schema.get("required", []),
                "properties": sorted(t.input_schema.get("properties", {}).keys()),
                "read_only": t.annotations.read_only_hint if t.annotations else None,
                "destructive": t.annotations.destructive_hint if t.annotations else None,
                "idempotent": t.annotations.idempotent_hint if t.annotations else None,
            }
            for t in tools
        ]

        # A swarm with an exec pool; a command, then a small DAG.
        swarm = await a.ok(
            "swarm_init",
            {
                "name": f"py-team-{args.transport}",
                "topology": "mesh",
                "agents": [{"type": "coder", "driver": "exec", "min": 1}],
            },
        )
        sid = swarm["id"]
        steps["swarm_init"] = swarm
        steps["swarm_list"] = await a.ok("swarm_list", {})
        steps["swarm_status"] = await a.ok("swarm_status", {"swarm_id": sid})

        submitted = await a.ok(
            "task_submit",
            {"tasks": [{"swarm": sid, "spec": {"command": "echo hello-from-python"}}]},
        )
        tid = submitted["tasks"][0]["id"]
        progress: list[dict[str, Any]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": p, "total": total, "message": message})

        steps["task_wait"] = await a.ok(
            "task_wait", {"task_id": tid, "timeout_seconds": 120}, progress_callback=on_progress
        )
        await settle(progress)
        steps["task_wait_progress"] = progress
        steps["task_status"] = await a.ok("task_status", {"task_id": tid})
        steps["task_result"] = await a.ok("task_result", {"task_id": tid})

        dag = await a.ok(
            "task_submit",
            {
                "tasks": [
                    {"local_id": "build", "swarm": sid, "spec": {"command": "echo built"}},
                    {
                        "local_id": "test",
                        "swarm": sid,
                        "spec": {"command": "echo tested"},
                        "depends_on": ["build"],
                    },
                ]
            },
        )
        steps["dag_submit"] = dag
        dag_progress: list[dict[str, Any]] = []

        async def on_dag_progress(p: float, total: float | None, message: str | None) -> None:
            dag_progress.append({"progress": p, "total": total, "message": message})

        last = dag["tasks"][1]["id"]
        steps["dag_wait"] = await a.ok(
            "task_wait", {"task_id": last, "timeout_seconds": 120}, progress_callback=on_dag_progress
        )
        await settle(dag_progress)
        steps["dag_wait_progress"] = dag_progress
        steps["dag_first"] = await a.ok("task_result", {"task_id": dag["tasks"][0]["id"]})
        steps["task_list"] = await a.ok("task_list", {"swarm_id": sid, "state": "succeeded"})

        # Resources: the templates, and the first task's logs.
        templates = (await s.list_resource_templates()).resource_templates
        steps["resource_templates"] = [t.uri_template for t in templates]
        logs = await s.read_resource(f"cflow://tasks/{tid}/logs")
        steps["logs_resource"] = [
            {"uri": str(c.uri), "mime_type": c.mime_type, "text": getattr(c, "text", None)}
            for c in logs.contents
        ]

        # Memory.
        steps["memory_store"] = await a.ok(
            "memory_store",
            {
                "namespace": "project/py",
                "key": "decision",
                "value": {"text": "sqlite for tests, postgres in production"},
                "tags": ["db"],
            },
        )
        await a.ok("memory_store", {"namespace": "project/py", "key": "other", "value": 42})
        steps["memory_get"] = await a.ok("memory_get", {"namespace": "project/py", "key": "decision"})
        steps["memory_list"] = await a.ok("memory_list", {"namespace": "project/py"})
        steps["memory_search"] = await a.ok("memory_search", {"query": "postgres"})
        steps["memory_delete"] = await a.ok(
            "memory_delete", {"namespace": "project/py", "key": "decision"}
        )
        steps["memory_get_deleted"] = await a.raw(
            "memory_get", {"namespace": "project/py", "key": "decision"}
        )

        # Agents and messages: the pool's agent and a spawned one talk.
        spawned = await a.ok(
            "agent_spawn", {"swarm_id": sid, "type": "reviewer", "driver": "exec"}
        )
        steps["agent_spawn"] = spawned
        agents = await a.ok("agent_list", {"swarm_id": sid})
        steps["agent_list"] = agents
        pool_agent = next(x["id"] for x in agents["items"] if x["id"] != spawned["id"])
        steps["agent_status"] = await a.ok("agent_status", {"agent_id": spawned["id"]})
        steps["message_send"] = await a.ok(
            "message_send",
            {
                "swarm_id": sid,
                "from": pool_agent,
                "to": spawned["id"],
                "body": {"note": "please review"},
            },
        )
        steps["message_inbox"] = await a.ok("message_inbox", {"agent_id": spawned["id"]})
        steps["message_sender"] = pool_agent
        steps["message_receiver"] = spawned["id"]

        # A long task, cancelled.
        slow = await a.ok(
            "task_submit", {"tasks": [{"swarm": sid, "spec": {"command": "sleep 60"}}]}
        )
        steps["task_cancel"] = await a.ok("task_cancel", {"task_id": slow["tasks"][0]["id"]})

        # The swarm's life: scale, pause, resume, stop an agent, stop the swarm.
        steps["swarm_scale"] = await a.ok(
            "swarm_scale", {"swarm_id": sid, "pool": {"type": "coder", "max": 3}}
        )
        steps["swarm_pause"] = await a.ok("swarm_pause", {"swarm_id": sid})
        steps["swarm_resume"] = await a.ok("swarm_resume", {"swarm_id": sid})
        steps["agent_stop"] = await a.ok("agent_stop", {"agent_id": spawned["id"]})

        # The viewer may read but not destroy: a tool error naming the refusal, state unchanged.
        async with connect(args.transport, args.server, args.cflow, args.viewer_token) as (vs, _):
            viewer = Driver(vs, report, "viewer")
            errors["viewer_swarm_stop"] = await viewer.raw("swarm_stop", {"swarm_id": sid})
            errors["viewer_memory_delete"] = await viewer.raw(
                "memory_delete", {"namespace": "project/py", "key": "other"}
            )
            steps["viewer_swarm_status"] = await viewer.ok("swarm_status", {"swarm_id": sid})
        steps["after_viewer_memory_get"] = await a.ok(
            "memory_get", {"namespace": "project/py", "key": "other"}
        )

        steps["swarm_stop"] = await a.ok("swarm_stop", {"swarm_id": sid})
        steps["swarm_status_after_stop"] = await a.ok("swarm_status", {"swarm_id": sid})
        steps["cost_report"] = await a.ok("cost_report", {"by": "model"})

        # Bad arguments: an unknown field, a wrong type, a missing required field. Each is an
        # error answer and the session goes on.
        errors["unknown_field"] = await a.raw("swarm_status", {"swarm": sid})
        errors["wrong_type"] = await a.raw("task_wait", {"task_id": tid, "timeout_seconds": "soon"})
        errors["missing_field"] = await a.raw("memory_get", {"namespace": "project/py"})
        errors["unknown_tool"] = await a.raw("no_such_tool", {})
        steps["after_bad_arguments"] = await a.ok("swarm_list", {})

        # Resources that do not exist.
        for name, uri in [
            ("resource_unknown_task", "cflow://tasks/tk-does-not-exist/logs"),
            ("resource_not_cflow", "cflow://nothing/here"),
            ("resource_other_tenant", f"cflow://tasks/{other_task_id}/logs"),
        ]:
            try:
                await s.read_resource(uri)
                errors[name] = {"kind": "ok"}
            except MCPError as e:
                errors[name] = {"kind": "protocol_error", "code": e.code, "message": e.message}

        # Tenant B's ids are unknown to tenant A.
        errors["other_tenant_task_status"] = await a.raw("task_status", {"task_id": other_task_id})
        errors["other_tenant_task_cancel"] = await a.raw("task_cancel", {"task_id": other_task_id})
        errors["other_tenant_swarm_status"] = await a.raw(
            "swarm_status", {"swarm_id": other_swarm_id}
        )
        steps["other_task_id"] = other_task_id
        steps["other_swarm_id"] = other_swarm_id

        # Last, the ledger: every call above was recorded as mcp.call.
        steps["audit_query"] = await a.ok("audit_query", {"limit": 1000})

    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--transport", choices=["stdio", "http"], required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--cflow", required=True)
    args = p.parse_args()
    args.token = os.environ["MCP_TEST_TOKEN"]
    args.viewer_token = os.environ["MCP_TEST_VIEWER_TOKEN"]
    args.other_token = os.environ["MCP_TEST_OTHER_TOKEN"]
    report = asyncio.run(flow(args))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
