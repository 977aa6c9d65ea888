//! Databases and aliases: the names collections are reached by.
//!
//! **Databases** are namespaces. A collection in database `db` has the qualified name
//! `db.name`; one in the database `default` is just `name` (so every collection made
//! before databases existed is in `default`, unchanged). A collection or database name
//! never contains `.` (`check_name`), so the split is unambiguous. The catalog lists
//! the databases besides `default`; a database can be dropped only when empty.
//!
//! **Aliases** are second names of a collection (Milvus's blue/green switch: point the
//! alias `prod` at a new collection in one step). An alias lives in its collection's
//! database, can be used wherever a collection is read or written, and is refused where
//! a collection itself is meant (drop, rename). A collection with aliases cannot be
//! dropped; renaming it carries them along.
//!
//! Both live in the catalog (`catalog.json`), written atomically with the rest of it;
//! the engine keeps the alias map in memory for lookups.

use super::{check_name, invalid, Engine, EngineError, Result};
use crate::catalog::{CatalogFile, DatabaseMeta};
use crate::types::now_ms;

/// The database every client starts in; it always exists and cannot be dropped.
pub const DEFAULT_DATABASE: &str = "default";

/// The engine's name of `name` in database `db` (empty or `default`: `name` itself).
pub fn qualified(db: &str, name: &str) -> String {
    if db.is_empty() || db == DEFAULT_DATABASE {
        name.to_string()
    } else {
        format!("{db}.{name}")
    }
}

/// `(database, name)` of a qualified name.
pub fn split_qualified(q: &str) -> (&str, &str) {
    q.split_once('.').unwrap_or((DEFAULT_DATABASE, q))
}

/// A valid collection (or alias) name whose database exists.
pub(super) fn check_collection_name(cat: &CatalogFile, q: &str) -> Result<()> {
    let (db, name) = split_qualified(q);
    check_name("collection", name)?;
    if db != DEFAULT_DATABASE && !cat.databases.iter().any(|d| d.name == db) {
        return Err(EngineError::DatabaseNotFound(db.to_string()));
    }
    Ok(())
}

impl Engine {
    // ------------------------------------------------------------ databases

    /// `default`, then the others in the order they were made.
    pub fn list_databases(&self) -> Vec<String> {
        let cat = self.catalog.lock();
        std::iter::once(DEFAULT_DATABASE.to_string())
            .chain(cat.databases.iter().map(|d| d.name.clone()))
            .collect()
    }

    /// Whether database `db` exists.
    pub fn has_database(&self, db: &str) -> bool {
        db.is_empty()
            || db == DEFAULT_DATABASE
            || self.catalog.lock().databases.iter().any(|d| d.name == db)
    }

    /// A database's id and creation time (`default`: id 1, time 0).
    pub fn describe_database(&self, db: &str) -> Result<DatabaseMeta> {
        if db.is_empty() || db == DEFAULT_DATABASE {
            return Ok(DatabaseMeta {
                name: DEFAULT_DATABASE.into(),
                id: 1,
                created_ms: 0,
            });
        }
        self.catalog
            .lock()
            .databases
            .iter()
            .find(|d| d.name == db)
            .cloned()
            .ok_or_else(|| EngineError::DatabaseNotFound(db.to_string()))
    }

    pub fn create_database(&self, db: &str) -> Result<()> {
        check_name("database", db)?;
        let mut cat = self.catalog.lock();
        if db == DEFAULT_DATABASE || cat.databases.iter().any(|d| d.name == db) {
            return Err(invalid(format!("database '{db}' already exists")));
        }
        // Ids 1 (default) and up; collection ids are a separate sequence.
        let id = cat.databases.iter().map(|d| d.id).max().unwrap_or(1) + 1;
        cat.databases.push(DatabaseMeta {
            name: db.to_string(),
            id,
            created_ms: now_ms(),
        });
        if let Err(e) = self.save_catalog(&cat) {
            cat.databases.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Drops an empty database.
    pub fn drop_database(&self, db: &str) -> Result<()> {
        if db == DEFAULT_DATABASE {
            return Err(invalid("the database 'default' cannot be dropped"));
        }
        let mut cat = self.catalog.lock();
        let Some(pos) = cat.databases.iter().position(|d| d.name == db) else {
            return Err(EngineError::DatabaseNotFound(db.to_string()));
        };
        let prefix = format!("{db}.");
        let inside: Vec<&str> = cat
            .collections
            .iter()
            .filter_map(|c| c.name.strip_prefix(&prefix))
            .collect();
        if !inside.is_empty() {
            return Err(invalid(format!(
                "database '{db}' is not empty: drop its collections first ({inside:?})"
            )));
        }
        let removed = cat.databases.remove(pos);
        if let Err(e) = self.save_catalog(&cat) {
            cat.databases.insert(pos, removed);
            return Err(e);
        }
        Ok(())
    }

    // ------------------------------------------------------------ aliases

    /// Makes `alias` a second name of `collection` (qualified names, same database).
    pub fn create_alias(&self, alias: &str, collection: &str) -> Result<()> {
        self.set_alias(alias, collection, false)
    }

    /// Points an existing alias at another collection of its database.
    pub fn alter_alias(&self, alias: &str, collection: &str) -> Result<()> {
        self.set_alias(alias, collection, true)
    }

    fn set_alias(&self, alias: &str, collection: &str, existing: bool) -> Result<()> {
        let mut cat = self.catalog.lock();
        check_collection_name(&cat, alias)?;
        if split_qualified(alias).0 != split_qualified(collection).0 {
            return Err(invalid(format!(
                "alias '{alias}' and collection '{collection}' are in different databases"
            )));
        }
        if !self.collections.read().contains_key(collection) {
            return Err(match cat.aliases.get(collection) {
                Some(t) => invalid(format!(
                    "'{collection}' is itself an alias (of '{t}'); name the collection"
                )),
                None => EngineError::CollectionNotFound(collection.to_string()),
            });
        }
        if self.collections.read().contains_key(alias) {
            return Err(invalid(format!(
                "'{alias}' is a collection; an alias needs a name of its own"
            )));
        }
        match (cat.aliases.get(alias), existing) {
            (Some(t), false) => {
                return Err(invalid(format!(
                "alias '{alias}' already exists (for collection '{t}'); use alter_alias to move it"
            )))
            }
            (None, true) => return Err(EngineError::AliasNotFound(alias.to_string())),
            _ => {}
        }
        let before = cat
            .aliases
            .insert(alias.to_string(), collection.to_string());
        if let Err(e) = self.save_catalog(&cat) {
            match before {
                Some(b) => cat.aliases.insert(alias.to_string(), b),
                None => cat.aliases.remove(alias),
            };
            return Err(e);
        }
        self.aliases
            .write()
            .insert(alias.to_string(), collection.to_string());
        Ok(())
    }

    /// Removes an alias; removing one that does not exist is not an error (as Milvus).
    pub fn drop_alias(&self, alias: &str) -> Result<()> {
        let mut cat = self.catalog.lock();
        let Some(target) = cat.aliases.remove(alias) else {
            return Ok(());
        };
        if let Err(e) = self.save_catalog(&cat) {
            cat.aliases.insert(alias.to_string(), target);
            return Err(e);
        }
        self.aliases.write().remove(alias);
        Ok(())
    }

    /// The collection an alias names.
    pub fn describe_alias(&self, alias: &str) -> Result<String> {
        self.aliases
            .read()
            .get(alias)
            .cloned()
            .ok_or_else(|| EngineError::AliasNotFound(alias.to_string()))
    }

    /// `(alias, collection)` pairs in database `db`, of one collection if given, sorted.
    pub fn list_aliases(&self, db: &str, collection: Option<&str>) -> Vec<(String, String)> {
        let db = if db.is_empty() { DEFAULT_DATABASE } else { db };
        let mut v: Vec<(String, String)> = self
            .aliases
            .read()
            .iter()
            .filter(|(a, c)| {
                split_qualified(a).0 == db && collection.is_none_or(|want| want == c.as_str())
            })
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        v.sort();
        v
    }
}
