//! The node's store: one redb file per device, `tillmesh.redb` in the data folder.
//!
//! What is stored and why it is enough to reopen without replaying history: see `tables`. Every
//! write goes through the repo's writer; this module opens, creates and classifies failures.

pub mod tables;
pub mod wal;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableDatabase, StorageError};
use tillmesh_protocol::{DeviceId, DeviceKey, MeshId};

use tables::{FORMAT_V1, META, meta_key};

pub const STORE_FILE: &str = "tillmesh.redb";

/// Bounds redb's page cache so a node with a large store stays small in memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why a store could not be created or opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no tillmesh store in {0}: create one with `tillmesh init --data {0} --name NAME`")]
    Missing(PathBuf),
    #[error("{0} is not empty and holds no tillmesh store; choose an empty or new folder")]
    NotEmpty(PathBuf),
    #[error("a tillmesh store already exists in {0}; use it with `tillmesh run --data {0}`")]
    AlreadyExists(PathBuf),
    #[error("{path} is not a tillmesh store ({why}); it was left untouched")]
    NotOurs { path: PathBuf, why: String },
    #[error(
        "the store in {0} is in use by another process (is `tillmesh run` running there?); stop it, or talk to it through its API"
    )]
    Locked(PathBuf),
    #[error(
        "the store in {path} was written by another version of tillmesh (format '{found}'); use the version that wrote it"
    )]
    OtherFormat { path: PathBuf, found: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the store in {path} could not be read: {detail}")]
    Storage { path: PathBuf, detail: String },
}

impl OpenError {
    fn storage(path: &Path, e: impl std::fmt::Display) -> Self {
        OpenError::Storage {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }
}

/// Who this device is, as recorded in its store.
pub struct Identity {
    pub key: DeviceKey,
    pub device_id: DeviceId,
    pub device_name: String,
    pub mesh_id: MeshId,
    pub root_id: DeviceId,
    pub receipt_prefix: String,
}

/// Makes a receipt prefix from a device name: "Till 1" -> "TILL1". Short, so receipts read well.
pub fn receipt_prefix(name: &str) -> String {
    let p: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .take(8)
        .collect();
    if p.is_empty() { "TILL".into() } else { p }
}

pub fn store_path(dir: &Path) -> PathBuf {
    dir.join(STORE_FILE)
}

/// Where `Repo::copy_at_checkpoints` keeps the store as of its last checkpoint.
pub fn checkpoint_copy_path(dir: &Path) -> PathBuf {
    dir.join("tillmesh.redb.checkpoint")
}

fn map_db_error(path: &Path, e: DatabaseError) -> OpenError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => {
            OpenError::Locked(path.parent().unwrap_or(path).to_owned())
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::WouldBlock => {
            OpenError::Locked(path.parent().unwrap_or(path).to_owned())
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            OpenError::NotOurs {
                path: path.to_owned(),
                why: io.to_string(),
            }
        }
        DatabaseError::Storage(StorageError::Io(io)) => OpenError::Io {
            path: path.to_owned(),
            source: io,
        },
        DatabaseError::Storage(StorageError::Corrupted(why)) => OpenError::NotOurs {
            path: path.to_owned(),
            why,
        },
        DatabaseError::UpgradeRequired(v) => OpenError::NotOurs {
            path: path.to_owned(),
            why: format!("redb file format {v}"),
        },
        other => OpenError::storage(path, other),
    }
}

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// Whether a new store may be created in `dir`: a new folder, or an empty one.
pub fn check_creatable(dir: &Path) -> Result<(), OpenError> {
    if store_path(dir).exists() {
        return Err(OpenError::AlreadyExists(dir.to_owned()));
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|source| OpenError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(OpenError::NotEmpty(dir.to_owned()));
        }
    }
    Ok(())
}

/// Creates a new store for a new device. Refuses a folder that holds anything else.
pub fn create(
    dir: &Path,
    device_name: &str,
    key: DeviceKey,
    mesh_id: MeshId,
    root_id: DeviceId,
) -> Result<Database, OpenError> {
    let io_err = |source| OpenError::Io {
        path: dir.to_owned(),
        source,
    };
    let path = store_path(dir);
    check_creatable(dir)?;
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let db = builder()
        .create(&path)
        .map_err(|e| map_db_error(&path, e))?;
    let tx = db.begin_write().map_err(|e| OpenError::storage(&path, e))?;
    {
        let mut meta = tx
            .open_table(META)
            .map_err(|e| OpenError::storage(&path, e))?;
        let prefix = receipt_prefix(device_name);
        let secret = key.secret();
        for (k, v) in [
            (meta_key::FORMAT, FORMAT_V1),
            (meta_key::DEVICE_SECRET, &secret[..]),
            (meta_key::DEVICE_NAME, device_name.as_bytes()),
            (meta_key::MESH_ID, mesh_id.as_bytes()),
            (meta_key::ROOT_ID, root_id.as_bytes()),
            (meta_key::RECEIPT_PREFIX, prefix.as_bytes()),
        ] {
            meta.insert(k, v)
                .map_err(|e| OpenError::storage(&path, e))?;
        }
    }
    tables::create_all(&tx).map_err(|e| OpenError::storage(&path, e))?;
    tx.commit().map_err(|e| OpenError::storage(&path, e))?;
    Ok(db)
}

/// Opens an existing store and reads the device's identity from it.
pub fn open(dir: &Path) -> Result<(Database, Identity), OpenError> {
    let path = store_path(dir);
    if !path.exists() {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(OpenError::NotOurs {
                path: dir.to_owned(),
                why: format!("it has no {STORE_FILE}"),
            });
        }
        return Err(OpenError::Missing(dir.to_owned()));
    }
    let db = builder().open(&path).map_err(|e| map_db_error(&path, e))?;
    let identity = read_identity(&db, &path)?;
    Ok((db, identity))
}

fn read_identity(db: &Database, path: &Path) -> Result<Identity, OpenError> {
    let not_ours = |why: &str| OpenError::NotOurs {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let tx = db.begin_read().map_err(|e| OpenError::storage(path, e))?;
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(not_ours("a redb file without tillmesh tables"));
        }
        Err(e) => return Err(OpenError::storage(path, e)),
    };
    let get = |k: &str| -> Result<Option<Vec<u8>>, OpenError> {
        Ok(meta
            .get(k)
            .map_err(|e| OpenError::storage(path, e))?
            .map(|v| v.value().to_vec()))
    };
    let format = get(meta_key::FORMAT)?.ok_or_else(|| not_ours("no format marker"))?;
    if format != FORMAT_V1 {
        return Err(OpenError::OtherFormat {
            path: path.to_owned(),
            found: String::from_utf8_lossy(&format).into(),
        });
    }
    let arr32 = |k: &str| -> Result<[u8; 32], OpenError> {
        get(k)?
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| not_ours(&format!("missing or damaged '{k}'")))
    };
    let text = |k: &str| -> Result<String, OpenError> {
        get(k)?
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| not_ours(&format!("missing or damaged '{k}'")))
    };
    let key = DeviceKey::from_secret(arr32(meta_key::DEVICE_SECRET)?);
    Ok(Identity {
        device_id: key.device_id(),
        key,
        device_name: text(meta_key::DEVICE_NAME)?,
        mesh_id: MeshId(arr32(meta_key::MESH_ID)?),
        root_id: DeviceId(arr32(meta_key::ROOT_ID)?),
        receipt_prefix: text(meta_key::RECEIPT_PREFIX)?,
    })
}

/// The open database, shared by the writer and every reader.
///
/// redb refuses every later write on a handle that once failed to write (a full disk, say), so
/// after such a failure the writer closes and reopens it here; readers wait for the swap.
pub struct Shared {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
}

/// How long a reopen waits for readers to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    pub fn new(dir: &Path, db: Database) -> Self {
        Shared {
            path: store_path(dir),
            db: RwLock::new(Some(Arc::new(db))),
        }
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The open database, reopening it first if a failed reopen left none.
    pub fn get(&self) -> Result<Arc<Database>, OpenError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(
            builder()
                .open(&self.path)
                .map_err(|e| map_db_error(&self.path, e))?,
        );
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Closes the handle and opens the file again. Callers must not hold a handle themselves.
    pub fn reopen(&self) -> Result<(), OpenError> {
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut arc) = old {
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(arc) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        arc = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still_shared) => {
                        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(still_shared);
                        return Err(OpenError::storage(
                            &self.path,
                            "readers kept the store busy; will retry",
                        ));
                    }
                }
            }
        }
        self.get().map(drop)
    }
}

/// True when a storage failure means the disk is full: the write was refused whole, and the
/// node keeps serving reads until space is freed.
pub fn is_disk_full(e: &StorageError) -> bool {
    matches!(e, StorageError::Io(io) if io.raw_os_error() == Some(28 /* ENOSPC */) || io.kind() == io::ErrorKind::StorageFull || io.kind() == io::ErrorKind::QuotaExceeded)
}
