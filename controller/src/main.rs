//! ferrolb-controller: allocates addresses from IPAddressPools to LoadBalancer Services.

use anyhow::Context;
use clap::Parser;
use ferrolb_controller::lease::{self, LeaseSettings};
use ferrolb_controller::metrics::Metrics;
use ferrolb_controller::run::{self, Settings};
use ferrolb_runtime::logging::LogFormat;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Allocates addresses from IPAddressPools (metallb.io/v1beta1) to LoadBalancer Services")]
struct Args {
    /// Namespace whose IPAddressPools are honoured (the release namespace).
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,
    /// Handle only Services with this loadBalancerClass (default: only Services without a class).
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS")]
    load_balancer_class: Option<String>,
    /// Log format.
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    metrics_addr: String,
    /// Elect a leader among replicas through a Lease (off: this replica always writes).
    #[arg(long, env = "FERROLB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Lease name.
    #[arg(long, default_value = "ferrolb-controller")]
    lease_name: String,
    /// Seconds a leader lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferrolb_runtime::logging::init(args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "ferrolb-controller".into(), |h| h.trim().to_string())
    });
    let client =
        kube::Client::try_default().await.context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Metrics::new();
    let rendered = metrics.clone();
    let server =
        tokio::spawn(ferrolb_runtime::http::serve(args.metrics_addr.clone(), metrics.ready.clone(), move || {
            rendered.render()
        }));

    let lease = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args.namespace.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_seconds),
        renew_deadline: Duration::from_secs(args.lease_seconds * 2 / 3),
        renew_every: Duration::from_secs((args.lease_seconds / 7).max(1)),
    };
    let (lead_tx, lead_rx) = tokio::sync::oneshot::channel::<()>();
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::channel::<String>(1);
    let elector = {
        let (client, lease, enabled) = (client.clone(), lease.clone(), args.leader_election);
        tokio::spawn(async move {
            if !enabled {
                let _ = lead_tx.send(());
                return std::future::pending::<()>().await;
            }
            let api = lease::acquire(&client, &lease).await;
            tracing::info!(identity = %lease.identity, lease = %lease.name, "became leader");
            let _ = lead_tx.send(());
            let lost = lease::hold(api, lease).await;
            let _ = lost_tx.send(lost.to_string()).await;
        })
    };
    let settings = Settings {
        namespace: args.namespace.clone(),
        load_balancer_class: args.load_balancer_class.clone(),
        identity,
        pod_name: args.identity.clone().filter(|p| !p.is_empty()),
    };
    tracing::info!(namespace = %settings.namespace, class = ?settings.load_balancer_class, "starting");
    let leader = async move {
        let _ = lead_rx.await;
    };
    tokio::select! {
        result = run::run(client.clone(), settings, metrics, leader) => result.context("controller stopped")?,
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            elector.abort();
            if args.leader_election {
                release(&client, &lease).await;
            }
        }
        Some(why) = lost_rx.recv() => {
            // Stop at once: a replica that may no longer hold the lease must not write again.
            tracing::error!(%why, "leadership lost; exiting so the new leader is the only writer");
            std::process::exit(1);
        }
        served = server => anyhow::bail!("metrics server stopped: {served:?}"),
    }
    Ok(())
}

/// Hands the lease back on a clean stop so the standby takes over at once instead of after it expires.
async fn release(client: &kube::Client, s: &LeaseSettings) {
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client.clone(), &s.namespace);
    if let Ok(Some(lease)) = api.get_opt(&s.name).await
        && lease.spec.as_ref().and_then(|sp| sp.holder_identity.as_deref()) == Some(s.identity.as_str())
    {
        let patch = serde_json::json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": 1}});
        let _ = api.patch(&s.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await;
        tracing::info!("lease released");
    }
}
