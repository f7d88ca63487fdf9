//! Temporary SQLite stores and throwaway PostgreSQL databases for tests.
