//! Integration tests of the network component: in-process clusters on loopback.
mod bad_input;
mod harness;
mod membership;
mod messaging;
