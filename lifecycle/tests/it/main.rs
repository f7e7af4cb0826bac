//! Integration tests of the component runtime.
mod manager;
mod support;
