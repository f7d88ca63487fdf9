-- When each hook was last turned on and off, in Unix microseconds, so that the hook dispatcher
-- matches an event against the hook as it was when the event happened, not as it is when the
-- dispatcher gets to the event: an event still queued when a hook is turned on (or created) is
-- not delivered to it, and one still queued when a hook is turned off still is.
-- `enabled_since`: the last time it was turned on (its creation, if created on); NULL if it was
-- never on. `disabled_since`: the last time it was turned off; NULL while it is on, or if it was
-- created off and never turned on.
ALTER TABLE hooks ADD COLUMN enabled_since BIGINT;
ALTER TABLE hooks ADD COLUMN disabled_since BIGINT;
-- Existing hooks: on since their creation (events from before an upgrade are not queued any
-- more), and one that is off now was never on as far as any queued event is concerned.
UPDATE hooks SET enabled_since = created_at * 1000 WHERE enabled <> 0;
