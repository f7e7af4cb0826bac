//! The `ignite` command line: `start` runs a node in this process; every other command is a
//! client of a node's REST API (`--url`).
mod client;
mod start;
mod table;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default REST address of a node.
pub const DEFAULT_URL: &str = "http://127.0.0.1:10300";

/// A distributed database node after Apache Ignite 3's node-startup design.
#[derive(Debug, Parser)]
#[command(name = "ignite", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a node in this process and serve until SIGINT/SIGTERM.
    Start(start::StartArgs),
    /// The cluster this node belongs to.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Distributed tables and their rows.
    Table {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: table::TableCommand,
    },
    /// Inspect and configure one node.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NodeCommand,
    },
}

/// Arguments shared by every client command.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// REST address of the node.
    #[arg(long, global = true, default_value = DEFAULT_URL, env = "IGNITE_URL")]
    url: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// How client commands print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned text for people.
    Human,
    /// One JSON document for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Initialize the cluster: form the MetaStorage group and move every node of the
    /// physical topology from ZOMBIE to STARTED.
    Init {
        /// The cluster's name.
        #[arg(long)]
        name: String,
        /// MetaStorage voters (node names, comma separated); default: up to 3 nodes,
        /// alphabetically.
        #[arg(long, value_delimiter = ',')]
        metastorage: Vec<String>,
    },
    /// The cluster's id, name, MetaStorage voters and leader, as this node sees them.
    Status,
    /// The baseline: the nodes that hold data.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Cluster-wide configuration (`[cluster]`, `[baseline]`), the same on every node.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Cluster topologies.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// The current baseline.
    Show,
    /// Set the baseline by hand (it follows the topology again after the next change when
    /// `baseline.auto_adjust_ms` is not 0).
    Set {
        /// Node names, comma separated; each must be in the logical topology.
        #[arg(value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Every node this node sees on the network, initialized or not.
    Physical,
    /// The nodes that joined the cluster (MetaStorage voters and learners).
    Logical,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// The node's name and state.
    State,
    /// Name, version, state, addresses and uptime.
    Info,
    /// Show the run level, or move the node to LEVEL (`metastorage` stops the table layer for
    /// maintenance, `ready` starts it again).
    Runlevel {
        /// `zombie`, `metastorage` or `ready`.
        #[arg(value_parser = ["zombie", "metastorage", "ready"])]
        level: Option<String>,
    },
    /// Node-local configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Show the whole configuration or the value at PATH (e.g. `rest.listen`).
    Show {
        /// Dotted path of a root or key.
        path: Option<String>,
    },
    /// Change one value durably: PATH=VALUE, VALUE as JSON or a bare string.
    Update {
        /// `path=value`, e.g. `node.stop_timeout_ms=5000` or `cluster.default_replicas=3`.
        assignment: String,
    },
}

impl Cli {
    /// Run the parsed command; returns the process exit code.
    pub fn run(self) -> i32 {
        // a client command is a handful of requests: one thread serves it
        let threads = match &self.command {
            Command::Start(args) => args.worker_threads(),
            _ => 1,
        };
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        let runtime = match builder.enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return 1;
            }
        };
        let result = runtime.block_on(async move {
            match self.command {
                Command::Start(args) => start::run(args).await,
                Command::Cluster { client, command } => {
                    let c = client::Client::new(&client)?;
                    match command {
                        ClusterCommand::Init { name, metastorage } => {
                            c.cluster_init(&name, &metastorage).await
                        }
                        ClusterCommand::Status => c.cluster_status().await,
                        ClusterCommand::Baseline {
                            command: BaselineCommand::Show,
                        } => c.baseline(None).await,
                        ClusterCommand::Baseline {
                            command: BaselineCommand::Set { nodes },
                        } => c.baseline(Some(&nodes)).await,
                        ClusterCommand::Config {
                            command: ConfigCommand::Show { path },
                        } => {
                            c.config_show(client::ConfigScope::Cluster, path.as_deref())
                                .await
                        }
                        ClusterCommand::Config {
                            command: ConfigCommand::Update { assignment },
                        } => {
                            c.config_update(client::ConfigScope::Cluster, &assignment)
                                .await
                        }
                        ClusterCommand::Topology {
                            command: TopologyCommand::Physical,
                        } => c.topology("physical").await,
                        ClusterCommand::Topology {
                            command: TopologyCommand::Logical,
                        } => c.topology("logical").await,
                    }
                }
                Command::Table { client, command } => {
                    client::Client::new(&client)?.table(command).await
                }
                Command::Node { client, command } => {
                    let c = client::Client::new(&client)?;
                    match command {
                        NodeCommand::State => c.node_state().await,
                        NodeCommand::Info => c.node_info().await,
                        NodeCommand::Runlevel { level } => c.node_runlevel(level.as_deref()).await,
                        NodeCommand::Config {
                            command: ConfigCommand::Show { path },
                        } => {
                            c.config_show(client::ConfigScope::Node, path.as_deref())
                                .await
                        }
                        NodeCommand::Config {
                            command: ConfigCommand::Update { assignment },
                        } => {
                            c.config_update(client::ConfigScope::Node, &assignment)
                                .await
                        }
                    }
                }
            }
        });
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    }
}
