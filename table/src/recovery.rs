//! Recovery of the table manager's local state: the MetaStorage revision it last applied
//! (kept in the vault) and the design's "full update" when that revision lags behind the
//! node's recovery revision: partition storages on disk that the catalog no longer assigns
//! here (dropped tables, partitions moved away while the node was down) are destroyed.
use std::{collections::HashSet, sync::Arc};

use vault::VaultManager;

use crate::{
    error::{Error, Result},
    storage::PartitionStorageProvider,
};

/// The vault key of the last MetaStorage revision the table manager applied completely
/// (its catalog, and every replica started or destroyed to match).
pub const APPLIED_REVISION_KEY: &[u8] = b"table.applied_revision";

fn vault_error(e: vault::Error) -> Error {
    Error::InvalidState(format!("vault key table.applied_revision: {e}"))
}

/// The applied revision stored in the vault; `None` if none (or unreadable, which recovery
/// treats the same: as lagging).
pub(crate) async fn load_applied(vault: &VaultManager) -> Result<Option<u64>> {
    let Some(bytes) = vault.get(APPLIED_REVISION_KEY).await.map_err(vault_error)? else {
        return Ok(None);
    };
    match <[u8; 8]>::try_from(bytes.as_slice()) {
        Ok(b) => Ok(Some(u64::from_be_bytes(b))),
        Err(_) => {
            tracing::warn!(
                len = bytes.len(),
                "stored table applied revision is malformed, doing a full update"
            );
            Ok(None)
        }
    }
}

/// Stores `revision` as applied.
pub(crate) async fn store_applied(vault: &VaultManager, revision: u64) -> Result<()> {
    vault
        .put(APPLIED_REVISION_KEY, revision.to_be_bytes().to_vec())
        .await
        .map_err(vault_error)
}

/// Destroys every partition storage the provider holds that is not in `keep`; returns the
/// destroyed ones, sorted.
pub(crate) async fn destroy_stale(
    provider: &Arc<dyn PartitionStorageProvider>,
    keep: &HashSet<(String, u32)>,
) -> Result<Vec<(String, u32)>> {
    let provider = Arc::clone(provider);
    let keep = keep.clone();
    tokio::task::spawn_blocking(move || {
        let mut destroyed = Vec::new();
        for (table_id, p) in provider.partitions()? {
            if keep.contains(&(table_id.clone(), p)) {
                continue;
            }
            provider.partition(&table_id, p)?.destroy()?;
            tracing::info!(table_id = %table_id, partition = p, "stale partition storage destroyed");
            destroyed.push((table_id, p));
        }
        destroyed.sort();
        Ok(destroyed)
    })
    .await
    .map_err(|e| Error::storage("partition", e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryPartitionProvider;

    #[tokio::test]
    async fn stale_storages_go_and_kept_ones_stay() {
        let provider: Arc<dyn PartitionStorageProvider> = Arc::new(MemoryPartitionProvider::new());
        for (t, p) in [("a", 0), ("a", 1), ("b", 0)] {
            provider.partition(t, p).expect("create");
        }
        let keep = HashSet::from([("a".to_owned(), 1)]);
        let gone = destroy_stale(&provider, &keep).await.expect("destroy");
        assert_eq!(gone, vec![("a".to_owned(), 0), ("b".to_owned(), 0)]);
        assert_eq!(
            provider.partitions().expect("list"),
            vec![("a".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn applied_revision_round_trips_in_the_vault() {
        let vault = VaultManager::in_memory();
        lifecycle::Component::start(
            &vault,
            &lifecycle::StartContext {
                faults: lifecycle::FaultReporter::detached(),
            },
        )
        .await
        .expect("vault");
        assert_eq!(load_applied(&vault).await.expect("load"), None);
        store_applied(&vault, 42).await.expect("store");
        assert_eq!(load_applied(&vault).await.expect("load"), Some(42));
        vault
            .put(APPLIED_REVISION_KEY, vec![1, 2])
            .await
            .expect("put");
        assert_eq!(load_applied(&vault).await.expect("load"), None);
    }
}
