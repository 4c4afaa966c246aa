//! Shared by the browser test (and, by path, by the native fixture writer in `tests/`).

pub mod unit_fixture;
