//! The lab's CA, serving certificate, ServiceAccount signing key and static tokens, made with `openssl`.

use super::{Result, run};
use std::path::Path;

/// Tokens of the static identities (all `system:masters`): the admin, kube-controller-manager, and one
/// kubelet per node (`system:node:<name>`; the lab runs no Node authorizer, so they need the wider group).
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Admin bearer token.
    pub admin: String,
    /// kube-controller-manager's bearer token.
    pub kcm: String,
    /// Each node's kubelet token, in node order.
    pub kubelets: Vec<String>,
}

fn random_token() -> Result<String> {
    Ok(run("openssl", &["rand", "-hex", "24"])?.trim().to_string())
}

/// Writes `pki/{ca,apiserver,kubelet-client}.{crt,key}`, `pki/sa.key` and `tokens.csv` into `dir`.
pub fn generate(dir: &Path, nodes: &[String]) -> Result<Tokens> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(|e| super::io_err(&pki, e))?;
    let p = |f: &str| pki.join(f).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_crt, "-days", "3650", "-subj", "/CN=ferrolb-lab-ca"]);
    run("openssl", &ca)?;

    let (key, csr, crt) = (p("apiserver.key"), p("apiserver.csr"), p("apiserver.crt"));
    let mut req = vec!["req", "-new"];
    req.extend(ec);
    // Pods reach the API server at the `kubernetes` Service's ClusterIP, so it must be in the certificate.
    let san = format!(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:{}",
        super::realnode::KUBERNETES_SERVICE_IP
    );
    req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=kube-apiserver", "-addext", &san]);
    run("openssl", &req)?;
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "3650",
            "-copy_extensions",
            "copy",
            "-out",
            &crt,
        ],
    )?;
    // The API server's client certificate for the kubelets (`kubectl logs`, `exec`), which trust the lab CA.
    let (key, csr, crt) = (p("kubelet-client.key"), p("kubelet-client.csr"), p("kubelet-client.crt"));
    let mut req = vec!["req", "-new"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"]);
    run("openssl", &req)?;
    run("openssl", &["x509", "-req", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key, "-days", "3650", "-out", &crt])?;
    run("openssl", &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &p("sa.key")])?;

    let kubelets = nodes.iter().map(|_| random_token()).collect::<Result<Vec<_>>>()?;
    let tokens = Tokens { admin: random_token()?, kcm: random_token()?, kubelets };
    let mut csv = format!(
        "{},lab-admin,uid-lab-admin,\"system:masters\"\n{},system:kube-controller-manager,uid-kcm,\"system:masters\"\n",
        tokens.admin, tokens.kcm
    );
    for (node, token) in nodes.iter().zip(&tokens.kubelets) {
        csv.push_str(&format!("{token},system:node:{node},uid-kubelet-{node},\"system:masters,system:nodes\"\n"));
    }
    let path = dir.join("tokens.csv");
    std::fs::write(&path, csv).map_err(|e| super::io_err(&path, e))?;
    Ok(tokens)
}

/// A kubeconfig for `https://127.0.0.1:<port>` with a bearer token.
pub fn kubeconfig(ca: &Path, port: u16, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: {user}}}\ncurrent-context: lab\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
        ca = ca.display()
    )
}
