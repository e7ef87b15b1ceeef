//! Reading the API: a client from the kubeconfig, and the objects each subcommand needs. Decides nothing.

use crate::error::Error;
use crate::model::{Cluster, Settings};
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::path::Path;

/// A client from `--kubeconfig` (and `--context`), else the usual places (`KUBECONFIG`, `~/.kube/config`,
/// in-cluster), as kubectl finds it.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client, Error> {
    let options = KubeConfigOptions { context: context.map(str::to_string), ..KubeConfigOptions::default() };
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(path).map_err(|e| Error::NoKubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| Error::NoKubeconfig(e.to_string()))?
        }
        None if context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| Error::NoKubeconfig(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| Error::NoKubeconfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Kube)
}

async fn list<K>(api: Api<K>) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await?.items)
}

/// The settings the speakers run with, from the speaker DaemonSet in `namespace` when there is one.
pub async fn settings(client: &Client, namespace: &str) -> Result<Settings, Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default().labels("app.kubernetes.io/component=speaker")).await {
        Ok(list) => Ok(Settings::from_daemonset(list.items.first())),
        // A user who may not read DaemonSets still gets answers, with the defaults (flags override them).
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(Settings::default()),
        Err(e) => Err(e.into()),
    }
}

/// Services and ServiceL2Status objects (`status`).
pub async fn for_status(client: &Client, namespace: &str) -> Result<Cluster, Error> {
    Ok(Cluster {
        services: list(Api::<Service>::all(client.clone())).await?,
        statuses: list(Api::<ServiceL2Status>::namespaced(client.clone(), namespace)).await?,
        ..Cluster::default()
    })
}

/// IPAddressPools (`pools`).
pub async fn for_pools(client: &Client, namespace: &str) -> Result<Cluster, Error> {
    Ok(Cluster {
        pools: list(Api::<IPAddressPool>::namespaced(client.clone(), namespace)).await?,
        ..Cluster::default()
    })
}

/// The Service asked about; a clear error when it does not exist.
pub async fn service(client: &Client, namespace: &str, name: &str) -> Result<Service, Error> {
    Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::ServiceNotFound { namespace: namespace.to_string(), name: name.to_string() })
}

/// The speaker pods `settings` select in `namespace`; `None` when there is no selector or the user may not list
/// pods there (then `why` does not know where speakers run, and says nothing about it).
async fn speaker_pods(client: &Client, namespace: &str, settings: &Settings) -> Result<Option<Vec<Pod>>, Error> {
    let Some(selector) = &settings.speaker_pod_selector else { return Ok(None) };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default().labels(selector)).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Everything the controller and the speakers decide from, and the Events on one Service (`why`).
pub async fn for_why(client: &Client, namespace: &str, svc: &Service, settings: &Settings) -> Result<Cluster, Error> {
    let svc_ns = svc.metadata.namespace.clone().unwrap_or_default();
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let events: Api<Event> = Api::namespaced(client.clone(), &svc_ns);
    let fields = format!("involvedObject.kind=Service,involvedObject.name={svc_name}");
    Ok(Cluster {
        services: list(Api::<Service>::all(client.clone())).await?,
        pools: list(Api::<IPAddressPool>::namespaced(client.clone(), namespace)).await?,
        ads: list(Api::<L2Advertisement>::namespaced(client.clone(), namespace)).await?,
        slices: list(Api::<EndpointSlice>::all(client.clone())).await?,
        nodes: list(Api::<Node>::all(client.clone())).await?,
        namespaces: list(Api::<Namespace>::all(client.clone())).await?,
        statuses: list(Api::<ServiceL2Status>::namespaced(client.clone(), namespace)).await?,
        events: events.list(&ListParams::default().fields(&fields)).await?.items,
        speaker_pods: speaker_pods(client, namespace, settings).await?,
    })
}
