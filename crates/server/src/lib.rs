//! Voronka server.
