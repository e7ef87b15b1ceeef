//! `ferrolb-lab`: a real Kubernetes control plane and a Layer-2 network of namespaces on one machine.

use clap::{Parser, Subcommand};
use ferrolb_tests::lab::default_dir;
use std::path::PathBuf;

mod cluster;
mod network;

#[derive(Parser)]
#[command(about = "A real Kubernetes control plane and a Layer-2 lab network on one machine (needs root)")]
struct Cli {
    /// Lab name: prefix of its network namespaces.
    #[arg(long, global = true, env = "FERROLB_LAB_NAME", default_value = "flb")]
    name: String,
    /// State directory (default: $TMPDIR/ferrolb-lab-<name>).
    #[arg(long, global = true, env = "FERROLB_LAB_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Cluster(cluster::Cmd),
    #[command(flatten)]
    Network(network::Cmd),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(|| default_dir(&cli.name));
    match cli.command {
        Cmd::Cluster(command) => cluster::run(command, cli.name, &dir).await,
        Cmd::Network(command) => network::run(command, &dir).await,
    }
}
