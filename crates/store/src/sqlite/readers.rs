//! A small pool of read connections used from the blocking thread pool.
//!
//! rusqlite is synchronous; running queries on the async runtime's threads would stall
//! every other request on this 2-core machine during a large count. A semaphore bounds
//! concurrent reads to the number of connections, so a free connection is always there
//! when a permit is.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

struct Inner {
    idle: Mutex<Vec<Connection>>,
}

/// The read connections.
pub(crate) struct ReadPool {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

/// Returns the connection to the pool even if the query panicked.
struct Lease {
    conn: Option<Connection>,
    pool: Arc<Inner>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(c);
            }
        }
    }
}

impl ReadPool {
    /// Wraps opened, configured connections.
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        let n = conns.len();
        ReadPool {
            inner: Arc::new(Inner {
                idle: Mutex::new(conns),
            }),
            permits: Arc::new(Semaphore::new(n)),
        }
    }

    /// Runs `f` on an idle connection.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Database("the read pool is closed".into()))?;
        let pool = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the query, even if the caller stops waiting:
            // otherwise a new reader could get a permit while no connection is idle.
            let _permit = permit;
            let conn = pool
                .idle
                .lock()
                .map_err(|_| StoreError::Database("the read pool is poisoned".into()))?
                .pop()
                .ok_or_else(|| StoreError::Database("no idle read connection".into()))?;
            let lease = Lease {
                conn: Some(conn),
                pool: pool.clone(),
            };
            match &lease.conn {
                Some(c) => f(c),
                None => Err(StoreError::Database("no idle read connection".into())),
            }
        })
        .await
        .map_err(|e| StoreError::Database(format!("a read failed: {e}")))?
    }
}
