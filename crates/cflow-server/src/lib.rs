//! cflow-server.
