//! The `/metrics`, `/healthz` and `/readyz` endpoints both binaries serve (plain HTTP/1.1, one request per
//! connection: Prometheus and the kubelet's probes need no more).

use crate::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves until the listener fails: `/metrics` renders `metrics()`, `/readyz` answers 200 once `ready` is set.
pub async fn serve<F>(addr: String, ready: Arc<AtomicBool>, metrics: F) -> Result<(), Error>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| Error::Serve { addr: addr.clone(), source })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let metrics = Arc::new(metrics);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (code, body) = respond(request.split_whitespace().nth(1).unwrap_or("/"), &ready, || metrics());
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

fn respond(path: &str, ready: &AtomicBool, metrics: impl FnOnce() -> String) -> (&'static str, String) {
    match path {
        "/metrics" => ("200 OK", metrics()),
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "ok\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            "not ready yet (caches syncing; a speaker also waits for its liveness port)\n".into(),
        ),
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag_and_metrics_are_rendered_on_request() {
        let ready = AtomicBool::new(false);
        assert_eq!(respond("/readyz", &ready, String::new).0, "503 Service Unavailable");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(respond("/readyz", &ready, String::new).0, "200 OK");
        assert_eq!(respond("/healthz", &ready, String::new), ("200 OK", "ok\n".to_string()));
        assert_eq!(respond("/metrics", &ready, || "x 1\n".into()), ("200 OK", "x 1\n".to_string()));
        assert_eq!(respond("/nope", &ready, String::new).0, "404 Not Found");
    }
}
