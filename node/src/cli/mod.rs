//! The `ignite` command line: `start` runs a node in this process; every other command is a
//! client of a node's REST API (`--url`).
mod client;
mod start;

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
    /// Cluster topologies.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Every node this node sees on the network, initialized or not.
    Physical,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// The node's name and state.
    State,
    /// Name, version, state, addresses and uptime.
    Info,
    /// Node-local configuration.
    Config {
        #[command(subcommand)]
        command: NodeConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NodeConfigCommand {
    /// Show the whole configuration or the value at PATH (e.g. `rest.listen`).
    Show {
        /// Dotted path of a root or key.
        path: Option<String>,
    },
    /// Change one value durably: PATH=VALUE, VALUE as JSON or a bare string.
    Update {
        /// `path=value`, e.g. `node.stop_timeout_ms=5000`.
        assignment: String,
    },
}

impl Cli {
    /// Run the parsed command; returns the process exit code.
    pub fn run(self) -> i32 {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
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
                        ClusterCommand::Topology {
                            command: TopologyCommand::Physical,
                        } => c.topology_physical().await,
                    }
                }
                Command::Node { client, command } => {
                    let c = client::Client::new(&client)?;
                    match command {
                        NodeCommand::State => c.node_state().await,
                        NodeCommand::Info => c.node_info().await,
                        NodeCommand::Config {
                            command: NodeConfigCommand::Show { path },
                        } => c.config_show(path.as_deref()).await,
                        NodeCommand::Config {
                            command: NodeConfigCommand::Update { assignment },
                        } => c.config_update(&assignment).await,
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
