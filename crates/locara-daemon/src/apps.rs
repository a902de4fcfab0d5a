//! The app registry (in progress).
