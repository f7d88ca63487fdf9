//! Hostile tests of the sandbox: they land in the next commit.
