-- A tenant's Claude Code hook policy (`cflow hook claude`): a JSON object with deny_commands,
-- deny_tools, deny_paths, context_namespaces and fail ("open" | "closed"); NULL for none.
ALTER TABLE tenants ADD COLUMN claude_policy TEXT;
