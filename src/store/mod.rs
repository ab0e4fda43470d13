//! The embedded transactional store (redb): image records and the name → image index, pod
//! sandbox and container records with their reserved names, and id lookups by prefix.
//! Every change is one ACID transaction, durable before it returns, so a `kill -9` at any point
//! leaves either the old or the new state. Knows nothing of registries, files or gRPC.

mod records;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

pub use records::{ContainerRecord, ExitInfo, ImageRecord, LayerRecord, PodRecord, PodState};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("image_names");
const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const POD_NAMES: TableDefinition<&str, &str> = TableDefinition::new("pod_names");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const CONTAINER_NAMES: TableDefinition<&str, &str> = TableDefinition::new("container_names");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening database {path}: {message} (run `kelsond repair-db` to rebuild it)")]
    Open { path: PathBuf, message: String },
    #[error("database {op}: {message}")]
    Db { op: &'static str, message: String },
    #[error("database record {key}: {message}")]
    Record { key: String, message: String },
    #[error("name {name:?} is reserved for {owner}")]
    NameTaken { name: String, owner: String },
}

fn db_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        message: e.to_string(),
    }
}

pub struct Store {
    db: Database,
}

const CACHE_BYTES: usize = 4 << 20;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Records are small (the whole file is typically well under 1 MiB); redb's default
        // cache may grow to 1 GiB and would show up as daemon RSS.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        // Every container's config is in here, env values (Kubernetes secrets) included.
        crate::owner_only::narrow_file(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let tx = db.begin_write().map_err(db_err("begin"))?;
        tx.open_table(IMAGES).map_err(db_err("open table"))?;
        tx.open_table(NAMES).map_err(db_err("open table"))?;
        tx.open_table(PODS).map_err(db_err("open table"))?;
        tx.open_table(POD_NAMES).map_err(db_err("open table"))?;
        tx.open_table(CONTAINERS).map_err(db_err("open table"))?;
        tx.open_table(CONTAINER_NAMES)
            .map_err(db_err("open table"))?;
        tx.commit().map_err(db_err("commit"))?;
        Ok(Store { db })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(IMAGES).map_err(db_err("open table"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err("iterate"))? {
            let (k, v) = row.map_err(db_err("read"))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(IMAGES).map_err(db_err("open table"))?;
        match t.get(id).map_err(db_err("read"))? {
            Some(v) => Ok(Some(decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The image id a repo tag or repo digest names.
    pub fn image_id_by_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(NAMES).map_err(db_err("open table"))?;
        Ok(t.get(name)
            .map_err(db_err("read"))?
            .map(|v| v.value().to_owned()))
    }

    /// Up to `max` image ids that start with `prefix`, in key order (a range scan: no record
    /// is read or decoded).
    pub fn image_ids_with_prefix(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(IMAGES).map_err(db_err("open table"))?;
        let mut out = Vec::new();
        for row in t.range::<&str>(prefix..).map_err(db_err("iterate"))? {
            let (k, _) = row.map_err(db_err("read"))?;
            let id = k.value();
            if !id.starts_with(prefix) || out.len() == max {
                break;
            }
            out.push(id.to_owned());
        }
        Ok(out)
    }

    /// Insert or merge `rec`; each of its names is moved from whatever image held it before
    /// (a tag re-pointed by a newer pull), all in one transaction.
    pub fn put_image(&self, rec: &ImageRecord) -> Result<ImageRecord, StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        let merged;
        {
            let mut images = tx.open_table(IMAGES).map_err(db_err("open table"))?;
            let mut names = tx.open_table(NAMES).map_err(db_err("open table"))?;
            let mut new = match images.get(rec.id.as_str()).map_err(db_err("read"))? {
                Some(v) => decode(&rec.id, v.value())?,
                None => rec.clone(),
            };
            new.layers = rec.layers.clone();
            new.pulled_at = rec.pulled_at;
            for n in rec.repo_tags.iter().chain(&rec.repo_digests) {
                let prev = names
                    .insert(n.as_str(), rec.id.as_str())
                    .map_err(db_err("write"))?
                    .map(|g| g.value().to_owned());
                if let Some(prev) = prev.filter(|p| *p != rec.id) {
                    let old = images
                        .get(prev.as_str())
                        .map_err(db_err("read"))?
                        .map(|v| v.value().to_vec());
                    if let Some(old) = old {
                        let mut old: ImageRecord = decode(&prev, &old)?;
                        old.repo_tags.retain(|t| t != n);
                        old.repo_digests.retain(|t| t != n);
                        images
                            .insert(prev.as_str(), encode(&prev, &old)?.as_slice())
                            .map_err(db_err("write"))?;
                    }
                }
            }
            for t in &rec.repo_tags {
                if !new.repo_tags.contains(t) {
                    new.repo_tags.push(t.clone());
                }
            }
            for d in &rec.repo_digests {
                if !new.repo_digests.contains(d) {
                    new.repo_digests.push(d.clone());
                }
            }
            images
                .insert(rec.id.as_str(), encode(&rec.id, &new)?.as_slice())
                .map_err(db_err("write"))?;
            merged = new;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(merged)
    }

    /// Record that a container was created from image `id` at `when` (unix seconds).
    pub fn touch_image(&self, id: &str, when: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut images = tx.open_table(IMAGES).map_err(db_err("open table"))?;
            let rec = images
                .get(id)
                .map_err(db_err("read"))?
                .map(|v| v.value().to_vec());
            if let Some(rec) = rec {
                let mut rec: ImageRecord = decode(id, &rec)?;
                rec.last_used = rec.last_used.max(when);
                images
                    .insert(id, encode(id, &rec)?.as_slice())
                    .map_err(db_err("write"))?;
            }
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(())
    }

    /// Drop `name` from image `id`, or the whole image when `name` is None. Returns the record
    /// as it was before, or None when there was no such image.
    pub fn remove_image(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        let before;
        {
            let mut images = tx.open_table(IMAGES).map_err(db_err("open table"))?;
            let mut names = tx.open_table(NAMES).map_err(db_err("open table"))?;
            let rec = images
                .get(id)
                .map_err(db_err("read"))?
                .map(|v| v.value().to_vec());
            let Some(rec) = rec else { return Ok(None) };
            let rec: ImageRecord = decode(id, &rec)?;
            let mut kept = rec.clone();
            match name {
                Some(n) => {
                    kept.repo_tags.retain(|t| t != n);
                    kept.repo_digests.retain(|t| t != n);
                    names.remove(n).map_err(db_err("write"))?;
                }
                None => {
                    kept.repo_tags.clear();
                    kept.repo_digests.clear();
                    for n in rec.repo_tags.iter().chain(&rec.repo_digests) {
                        names.remove(n.as_str()).map_err(db_err("write"))?;
                    }
                }
            }
            // The last tag gone, the image goes (as CRI-O and containerd do): a repo digest
            // alone does not keep an image the user removed by its name.
            if kept.repo_tags.is_empty() {
                for n in &kept.repo_digests {
                    names.remove(n.as_str()).map_err(db_err("write"))?;
                }
                images.remove(id).map_err(db_err("write"))?;
            } else {
                images
                    .insert(id, encode(id, &kept)?.as_slice())
                    .map_err(db_err("write"))?;
            }
            before = rec;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(Some(before))
    }
}

type Json = TableDefinition<'static, &'static str, &'static [u8]>;

/// What a requested id names among the records of one kind.
#[derive(Debug)]
pub enum Found<T> {
    One(T),
    /// Nothing (the id as shown in an error message).
    None(String),
    /// A prefix of more than one record's id.
    Many(String),
    /// No id was given.
    Empty,
}

/// Records kept under a reserved, unique name (pods, containers).
pub trait Named: serde::Serialize + serde::de::DeserializeOwned {
    const TABLE: Json;
    const NAMES: TableDefinition<'static, &'static str, &'static str>;
    fn id(&self) -> &str;
    fn name_key(&self) -> &str;
}

impl Named for PodRecord {
    const TABLE: Json = PODS;
    const NAMES: TableDefinition<'static, &'static str, &'static str> = POD_NAMES;
    fn id(&self) -> &str {
        &self.id
    }
    fn name_key(&self) -> &str {
        &self.name_key
    }
}

impl Named for ContainerRecord {
    const TABLE: Json = CONTAINERS;
    const NAMES: TableDefinition<'static, &'static str, &'static str> = CONTAINER_NAMES;
    fn id(&self) -> &str {
        &self.id
    }
    fn name_key(&self) -> &str {
        &self.name_key
    }
}

impl Store {
    pub fn list<T: Named>(&self) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(T::TABLE).map_err(db_err("open table"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err("iterate"))? {
            let (k, v) = row.map_err(db_err("read"))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The record a requested id names: a full id by its key, a prefix by a scan (unique or
    /// ambiguous). An id of a shape kelson never makes names nothing (see `ids::Lookup`).
    pub fn find<T: Named>(&self, requested: &str) -> Result<Found<T>, StoreError> {
        let id = match crate::ids::lookup(requested) {
            crate::ids::Lookup::Id(id) => id,
            crate::ids::Lookup::Empty => return Ok(Found::Empty),
            crate::ids::Lookup::Foreign => return Ok(Found::None(crate::ids::shown(requested))),
        };
        if id.len() == crate::ids::ID_LEN {
            return Ok(self
                .get::<T>(id)?
                .map_or_else(|| Found::None(id.to_owned()), Found::One));
        }
        let mut hits = self
            .list::<T>()?
            .into_iter()
            .filter(|r| r.id().starts_with(id));
        Ok(match (hits.next(), hits.next()) {
            (Some(r), None) => Found::One(r),
            (None, _) => Found::None(id.to_owned()),
            (Some(_), Some(_)) => Found::Many(id.to_owned()),
        })
    }

    pub fn get<T: Named>(&self, id: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin read"))?;
        let t = tx.open_table(T::TABLE).map_err(db_err("open table"))?;
        match t.get(id).map_err(db_err("read"))? {
            Some(v) => Ok(Some(decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Insert a new record, reserving its name; `NameTaken` if another record holds it.
    pub fn create<T: Named>(&self, rec: &T) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut names = tx.open_table(T::NAMES).map_err(db_err("open table"))?;
            let owner = names
                .get(rec.name_key())
                .map_err(db_err("read"))?
                .map(|v| v.value().to_owned());
            if let Some(owner) = owner {
                return Err(StoreError::NameTaken {
                    name: rec.name_key().to_owned(),
                    owner,
                });
            }
            names
                .insert(rec.name_key(), rec.id())
                .map_err(db_err("write"))?;
            let mut t = tx.open_table(T::TABLE).map_err(db_err("open table"))?;
            t.insert(rec.id(), encode(rec.id(), rec)?.as_slice())
                .map_err(db_err("write"))?;
        }
        tx.commit().map_err(db_err("commit"))
    }

    pub fn update<T: Named>(&self, rec: &T) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut t = tx.open_table(T::TABLE).map_err(db_err("open table"))?;
            t.insert(rec.id(), encode(rec.id(), rec)?.as_slice())
                .map_err(db_err("write"))?;
        }
        tx.commit().map_err(db_err("commit"))
    }

    /// Remove the record and release its name. Removing what is not there is not an error.
    pub fn remove<T: Named>(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut t = tx.open_table(T::TABLE).map_err(db_err("open table"))?;
            let old = t
                .remove(id)
                .map_err(db_err("write"))?
                .map(|v| v.value().to_vec());
            if let Some(old) = old {
                let rec: T = decode(id, &old)?;
                let mut names = tx.open_table(T::NAMES).map_err(db_err("open table"))?;
                let owner = names
                    .get(rec.name_key())
                    .map_err(db_err("read"))?
                    .map(|v| v.value().to_owned());
                if owner.as_deref() == Some(id) {
                    names.remove(rec.name_key()).map_err(db_err("write"))?;
                }
            }
        }
        tx.commit().map_err(db_err("commit"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Record {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(key: &str, r: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(r).map_err(|e| StoreError::Record {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![format!("r@{id}")],
            ..Default::default()
        }
    }

    #[test]
    fn tags_move_and_removal_drops_names() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("db")).unwrap();
        s.put_image(&rec("a", &["x:1"])).unwrap();
        s.put_image(&rec("b", &["x:1"])).unwrap();
        assert_eq!(s.image_id_by_name("x:1").unwrap().as_deref(), Some("b"));
        assert!(s.image("a").unwrap().unwrap().repo_tags.is_empty());
        s.put_image(&rec("b", &["x:1", "x:2"])).unwrap();
        // removing one name keeps the image while it has other tags
        s.remove_image("b", Some("x:1")).unwrap();
        assert!(s.image("b").unwrap().is_some());
        s.remove_image("b", Some("r@b")).unwrap();
        assert!(s.image("b").unwrap().is_some());
        // its last tag gone, the image goes with its digests
        s.put_image(&rec("b", &["x:2"])).unwrap();
        s.remove_image("b", Some("x:2")).unwrap();
        assert!(s.image("b").unwrap().is_none());
        assert!(s.image_id_by_name("r@b").unwrap().is_none());
        s.put_image(&rec("b", &["x:1"])).unwrap();
        s.remove_image("b", None).unwrap();
        assert!(s.image("b").unwrap().is_none());
        assert!(s.image_id_by_name("r@b").unwrap().is_none());
        assert!(s.remove_image("b", None).unwrap().is_none());
        drop(s);
        // durable across reopen
        let s = Store::open(&d.path().join("db")).unwrap();
        assert_eq!(s.images().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_file_is_refused_with_a_clear_message() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let e = Store::open(&p).err().unwrap().to_string();
        assert!(e.contains("repair-db"), "{e}");
    }
}
