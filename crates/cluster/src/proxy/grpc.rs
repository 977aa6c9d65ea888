//! Milvus's gRPC protocol on a proxy: the server crate's REST bridge
//! (`magpie_server::grpc::bridge`) over this proxy's REST dispatch, so pymilvus works
//! against a cluster unchanged. Each RPC becomes the REST call that does the same thing
//! (routed, logged and merged as any REST request is); schemas come from the catalog
//! mirror.

use super::{need, Proxy};
use magpie_engine::CollectionMeta;
use magpie_server::error::ApiError;
use magpie_server::grpc::bridge::RestBackend;
use serde_json::{json, Value};
use std::sync::Arc;

/// The proxy as the bridge's backend.
pub struct Backend(pub Arc<Proxy>);

#[tonic::async_trait]
impl RestBackend for Backend {
    async fn call(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.0.dispatch(path, body).await
    }

    async fn collection(&self, db: &str, name: &str) -> Result<(CollectionMeta, u32), ApiError> {
        let mut body = json!({"collectionName": name});
        if !db.is_empty() {
            body["dbName"] = json!(db);
        }
        self.0.qualify(&mut body).await?;
        self.0.resolve_alias(&mut body).await;
        let name = need(&body, "collectionName")?;
        let rec = self.0.collection(&name).await?;
        let mut meta = self.0.mirror.describe_collection(&name)?;
        // The cluster's id (the mirror's own differs).
        meta.id = rec.id;
        Ok((meta, rec.shards))
    }

    fn unready(&self) -> Option<String> {
        self.0.ready().err()
    }
}
