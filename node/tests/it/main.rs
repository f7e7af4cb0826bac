//! Integration tests of the node: in-process (`embedded`) and real `ignite` processes
//! (`process`).
mod cluster;
mod embedded;
mod etcdctl;
mod process;
mod support;
mod table_cluster;
mod tables;
