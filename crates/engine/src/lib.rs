//! Voronka engine.
