//! The clock (its own crate, `scan-clock`, so the simulator crate shares the type).
pub use scan_clock::Clock;
