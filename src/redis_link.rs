//! One Redis connection shared by a component, made on first use, re-made after a failure,
//! and every call bounded by a timeout, so an unreachable or slow Redis costs a caller at most
//! that long. Used by the shared quota and the shared idempotency keys.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};

/// Why Redis gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// A lazily connected, self-healing Redis connection.
pub struct RedisLink {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
}

impl RedisLink {
    /// Validates the URL; nothing is connected yet, so a gateway starts while Redis is down.
    pub fn new(url: &SecretString, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url.expose_secret())?,
            connection: Mutex::new(None),
            timeout,
        })
    }

    /// The connection, made now if there is none.
    pub async fn connect(&self) -> Result<ConnectionManager, LinkError> {
        if let Some(connection) = self.lock().clone() {
            return Ok(connection);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let connection = self
            .bounded(ConnectionManager::new_with_config(
                self.client.clone(),
                config,
            ))
            .await?;
        *self.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Runs one Redis call within the timeout; a failed call drops the connection, so the
    /// next one reconnects.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LinkError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.forget();
                Err(err.into())
            }
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        }
    }

    /// Drops the connection; the next call reconnects.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> MutexGuard<'_, Option<ConnectionManager>> {
        // A panic while holding this lock cannot leave a half-written connection.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }
}
