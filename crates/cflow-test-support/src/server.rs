//! A real cflow server on 127.0.0.1:0 for tests.
