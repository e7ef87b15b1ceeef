//! kubectl-ferrolb: `kubectl ferrolb status | why SERVICE | pools` (kubectl runs any `kubectl-*` binary on the
//! PATH as a plugin).

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubectl_ferrolb::{Error, cluster, pools, status, why};
use std::path::PathBuf;
use std::process::ExitCode;

/// Which node announces each address, why a Service has no address or no answer, and pool usage.
///
/// Exit codes: 0 answered; 1 API error; 2 usage error; 3 no cluster reachable (no kubeconfig); 4 Service not
/// found; 5 Service not of type LoadBalancer.
#[derive(Parser, Debug)]
#[command(name = "kubectl-ferrolb", version, about, long_about)]
struct Args {
    /// Path to the kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace ferrolb is installed in (its pools, advertisements and ServiceL2Status objects).
    #[arg(long, global = true, default_value = "metallb-system")]
    ferrolb_namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per Service address: the Service, its pool, the node announcing it, on which interfaces, since when.
    Status,
    /// Why a Service has no address, or why its address goes unanswered (the words of its Warning Events).
    Why {
        /// NAME, NAMESPACE/NAME or svc/NAME.
        service: String,
        /// The Service's namespace (default: "default").
        #[arg(short, long)]
        namespace: Option<String>,
        /// spec.loadBalancerClass ferrolb serves (default: read from the speaker DaemonSet, else none).
        #[arg(long)]
        load_balancer_class: Option<String>,
        /// The speakers run with speaker.ignoreExcludeLB=true (default: read from the speaker DaemonSet).
        #[arg(long)]
        ignore_exclude_lb: bool,
    },
    /// Per IPAddressPool: addresses total, in use and free, and whether the pool is valid.
    Pools,
}

async fn run(args: Args) -> anyhow::Result<String> {
    // A KUBECONFIG naming several files is kube's to read, not a single path.
    let kubeconfig = args.kubeconfig.filter(|p| !p.as_os_str().to_string_lossy().contains(':'));
    let client = cluster::client(kubeconfig.as_deref(), args.context.as_deref()).await?;
    let ns = &args.ferrolb_namespace;
    match args.command {
        Command::Status => {
            let settings = cluster::settings(&client, ns).await.context("reading the speaker DaemonSet")?;
            let c = cluster::for_status(&client, ns).await?;
            let rows = status::rows(&c.services, &c.statuses, settings.load_balancer_class.as_deref());
            Ok(status::render(&rows, k8s_openapi::jiff::Timestamp::now()))
        }
        Command::Pools => {
            let c = cluster::for_pools(&client, ns).await?;
            Ok(pools::render(&pools::rows(&c.pools)))
        }
        Command::Why { service, namespace, load_balancer_class, ignore_exclude_lb } => {
            let (svc_ns, name) = why::target(&service, namespace.as_deref())?;
            let svc = cluster::service(&client, &svc_ns, &name).await?;
            why::check_type(&svc)?;
            let mut settings = cluster::settings(&client, ns).await.context("reading the speaker DaemonSet")?;
            if load_balancer_class.is_some() {
                settings.load_balancer_class = load_balancer_class;
            }
            settings.ignore_exclude_lb |= ignore_exclude_lb;
            let c = cluster::for_why(&client, ns, &svc, &settings).await?;
            Ok(why::render(&why::why(&svc, &c, &settings, std::time::Instant::now())))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.downcast_ref::<Error>().map_or(1, Error::exit_code))
        }
    }
}
