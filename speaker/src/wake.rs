//! Why the planner wakes: every source sends a [`Wake`] saying what changed, and a pass folds the wakes that
//! arrived since the last one into [`Wakes`], so it redoes only the work the reasons call for.

use std::time::Duration;
use tokio::sync::mpsc;

/// One reason to plan again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The API state the plan reads changed (Services, EndpointSlices, Nodes, pools, advertisements).
    Api,
    /// The kernel says interfaces changed (netlink), or its notifications were lost.
    Interfaces,
    /// The periodic tick: liveness signs, Lease renewals and ARP sysctls are read; `rescan` when the safety-net
    /// reading of the interfaces is due too.
    Tick {
        /// Read the interfaces again.
        rescan: bool,
    },
    /// A peer's liveness verdict changed.
    Liveness,
    /// What the announcer answers for, holds back or sees contested changed.
    Announcer,
}

/// Where wakes are sent.
pub type WakeSender = mpsc::UnboundedSender<Wake>;

/// The wakes of one pass, folded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakes {
    /// The API state changed: prepare the plan's API half again.
    pub api: bool,
    /// Read the interfaces again, and why (`netlink` or `timer`, a metric label).
    pub rescan: Option<&'static str>,
    /// The periodic tick came.
    pub tick: bool,
}

impl Wakes {
    /// Adds one wake; a kernel notification outranks the timer as the reason for a rescan.
    pub fn add(&mut self, wake: Wake) {
        match wake {
            Wake::Api => self.api = true,
            Wake::Interfaces => self.rescan = Some("netlink"),
            Wake::Tick { rescan } => {
                self.tick = true;
                if rescan && self.rescan.is_none() {
                    self.rescan = Some("timer");
                }
            }
            Wake::Liveness | Wake::Announcer => {}
        }
    }

    /// Everything done at start: the API state, the interfaces, the tick's readings.
    pub fn everything() -> Self {
        Self { api: true, rescan: Some("timer"), tick: true }
    }
}

/// Sends a [`Wake::Tick`] every `every`, marked `rescan` once per `rescan_every`.
pub fn spawn_ticks(wake: WakeSender, every: Duration, rescan_every: Duration) {
    tokio::spawn(async move {
        let mut last_rescan = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every.min(rescan_every)).await;
            let rescan = last_rescan.elapsed() >= rescan_every;
            if rescan {
                last_rescan = tokio::time::Instant::now();
            }
            if wake.send(Wake::Tick { rescan }).is_err() {
                return;
            }
        }
    });
}

impl Wake {
    /// A wake that must not wait for the gathering window: a peer's verdict changed, so a failover may be due,
    /// and the pacing that protects the API's bursts would only add to the outage (docs/design.md §4.6).
    pub fn is_urgent(self) -> bool {
        matches!(self, Wake::Liveness)
    }
}

/// Waits for the next wake, then gathers every wake that arrives until `quiet_until`, or until an urgent one
/// arrives; `None` once every sender is gone.
pub async fn gather(rx: &mut mpsc::UnboundedReceiver<Wake>, quiet_until: tokio::time::Instant) -> Option<Wakes> {
    let mut wakes = Wakes::default();
    let first = rx.recv().await?;
    wakes.add(first);
    let mut urgent = first.is_urgent();
    let window = tokio::time::sleep_until(quiet_until);
    tokio::pin!(window);
    while !urgent {
        tokio::select! {
            () = &mut window => break,
            wake = rx.recv() => match wake {
                Some(wake) => {
                    wakes.add(wake);
                    urgent = wake.is_urgent();
                }
                None => break,
            },
        }
    }
    while let Ok(wake) = rx.try_recv() {
        wakes.add(wake);
    }
    Some(wakes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_fold_into_the_work_they_call_for() {
        let fold = |wakes: &[Wake]| {
            let mut w = Wakes::default();
            wakes.iter().for_each(|x| w.add(*x));
            w
        };
        assert_eq!(fold(&[Wake::Liveness, Wake::Announcer]), Wakes::default(), "a failover redoes no API work");
        assert_eq!(fold(&[Wake::Api]), Wakes { api: true, ..Wakes::default() });
        assert_eq!(fold(&[Wake::Tick { rescan: false }]), Wakes { tick: true, ..Wakes::default() });
        assert_eq!(fold(&[Wake::Tick { rescan: true }]).rescan, Some("timer"));
        assert_eq!(fold(&[Wake::Tick { rescan: true }, Wake::Interfaces]).rescan, Some("netlink"));
        assert_eq!(fold(&[Wake::Interfaces, Wake::Tick { rescan: true }]).rescan, Some("netlink"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_liveness_wake_ends_the_gathering_window_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let window = start + Duration::from_millis(250);
        tx.send(Wake::Api).expect("send");
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            sender.send(Wake::Liveness).expect("send");
        });
        let wakes = gather(&mut rx, window).await.expect("wakes");
        assert!(wakes.api, "the wakes before the urgent one are kept");
        let waited = start.elapsed();
        assert!(waited < Duration::from_millis(250), "waited {waited:?}: the whole window, not up to the verdict");

        tx.send(Wake::Api).expect("send");
        let start = tokio::time::Instant::now();
        let wakes = gather(&mut rx, start + Duration::from_millis(250)).await.expect("wakes");
        assert!(wakes.api);
        assert_eq!(start.elapsed(), Duration::from_millis(250), "an API wake waits for the window (pacing)");
    }
}
