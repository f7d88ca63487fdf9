-- The check a write held back by the writer (`exec::Query::defer`) makes itself: it travels with
-- the batch's `COMMIT` in one simple query, so an error it raises is what keeps the batch from
-- committing (PostgreSQL skips the rest of the query). `got` is returned when it equals `want`.
CREATE FUNCTION cflow_expect(what text, got bigint, want bigint) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF got IS DISTINCT FROM want THEN
        RAISE EXCEPTION 'cflow store: a batched write matched % % of %; the database was changed outside cflow''s writer', got, what, want;
    END IF;
    RETURN got;
END $$;
