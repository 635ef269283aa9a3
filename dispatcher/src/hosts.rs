//! A concurrency limit per destination (scheme, host, port), so one slow
//! receiver holds at most its share of the dispatcher's call slots and the
//! others keep being called.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A call slot for one destination; gives the slot back on drop.
pub struct HostPermit {
    permit: Option<OwnedSemaphorePermit>,
    host: String,
    limits: Arc<HostLimits>,
}

impl HostLimits {
    pub fn new(per_host: usize) -> Arc<Self> {
        Arc::new(HostLimits {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a slot at `host`.
    pub async fn acquire(self: &Arc<Self>, host: &str) -> HostPermit {
        let semaphore = self
            .lock()
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone();
        let permit = semaphore
            .acquire_owned()
            .await
            .expect("host semaphores are never closed");
        HostPermit {
            permit: Some(permit),
            host: host.to_string(),
            limits: self.clone(),
        }
    }

    /// Destinations with a call in flight or waiting.
    pub fn active_hosts(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HostPermit {
    /// Forgets a destination nobody is calling or waiting for, so the map
    /// does not grow with every host ever called.
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut hosts = self.limits.lock();
        // Waiters and holders each keep a clone (taken under this lock), so
        // a count of one means the map's is the last.
        if hosts
            .get(&self.host)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            hosts.remove(&self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_host_at_its_limit_does_not_block_another() {
        let limits = HostLimits::new(2);
        let _a1 = limits.acquire("http://a:80").await;
        let _a2 = limits.acquire("http://a:80").await;
        let third_a =
            tokio::time::timeout(Duration::from_millis(50), limits.acquire("http://a:80"));
        assert!(third_a.await.is_err(), "a is at its limit");
        let b = tokio::time::timeout(Duration::from_millis(50), limits.acquire("http://b:80"));
        assert!(b.await.is_ok(), "b has its own slots");
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limits = HostLimits::new(1);
        let a = limits.acquire("http://a:80").await;
        assert_eq!(limits.active_hosts(), 1);
        drop(a);
        assert_eq!(limits.active_hosts(), 0);
    }
}
