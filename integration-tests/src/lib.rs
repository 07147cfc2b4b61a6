//! Real-broker test harness.
