//! The node's store: one redb file per device, `tillmesh.redb` in the data folder.
//!
//! What is stored and why it is enough to reopen without replaying history: see `tables`. Every
//! write goes through the repo's writer; this module opens, creates and classifies failures.

pub mod seal;
pub mod tables;
pub mod wal;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableDatabase, StorageError, TableHandle};
use tillmesh_protocol::{DeviceId, DeviceKey, MeshId};

use seal::{KdfParams, SALT_BYTES, Sealer, StorageKey};
use tables::{FORMAT_V3, KEY_SOURCE_FILE, KEY_SOURCE_PASSPHRASE, META, meta_key};

pub const STORE_FILE: &str = "tillmesh.redb";
/// The storage key of a store not sealed with a passphrase, beside it, owner-only.
pub const KEY_FILE: &str = "storage.key";

/// Where a store's storage key comes from.
#[derive(Clone, Default)]
pub enum KeySource {
    /// `DIR/storage.key`, made at init: an unattended till restarts on its own.
    #[default]
    KeyFile,
    /// Stretched from a passphrase (Argon2id) at every open; nothing on disk unlocks the store.
    Passphrase(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::KeyFile => f.write_str("KeyFile"),
            KeySource::Passphrase(_) => f.write_str("Passphrase(..)"),
        }
    }
}

/// What the key check value seals: a key that opens it is the store's key.
const KEY_CHECK_TEXT: &[u8] = b"tillmesh storage key check";

/// Bounds redb's page cache so a node with a large store stays small in memory. 32 MiB: a
/// node's hot pages are the newest (entries, views and documents are keyed by author and
/// sequence, or by UUIDv7 id, so writes append); at 64 MiB a node after the replication bench
/// held 130-175 MB, at 32 MiB 129-141 MB, with the same ingest rates.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
        "the store in {path} was written by another version of tillmesh (format '{found}', this one reads 'tillmesh-store/3'); use the version that wrote it, or, once its sales have reached another node, move it aside and join the mesh again"
    )]
    OtherFormat { path: PathBuf, found: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the store in {path} could not be read: {detail}")]
    Storage { path: PathBuf, detail: String },
    #[error(
        "the passphrase does not unlock the store in {0} (or its storage.key is not the one it was created with); check the passphrase file, or restore the folder's storage.key from the backup made with it"
    )]
    WrongKey(PathBuf),
    #[error(
        "the store in {0} is sealed with a passphrase; give it with --passphrase-file FILE (or TILLMESH_PASSPHRASE_FILE)"
    )]
    PassphraseNeeded(PathBuf),
    #[error(
        "the store in {0} is sealed with its storage.key file, not a passphrase; run without --passphrase-file"
    )]
    NoPassphrase(PathBuf),
    #[error(
        "{0} is missing, and the store beside it cannot be read without it; restore it from the backup made with the store (a store made with a passphrase has no such file: then this folder is not one)"
    )]
    KeyFileMissing(PathBuf),
    #[error(
        "{0} can be read by other users, so anyone on this machine could read the store; make it owner-only with `chmod 600 {0}`, then start again"
    )]
    KeyFileExposed(PathBuf),
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

/// Creates a new store for a new device, with its storage key in a key file. Refuses a folder
/// that holds anything else.
pub fn create(
    dir: &Path,
    device_name: &str,
    key: DeviceKey,
    mesh_id: MeshId,
    root_id: DeviceId,
) -> Result<Database, OpenError> {
    create_with(dir, device_name, key, mesh_id, root_id, &KeySource::KeyFile)
}

/// [`create`] with the storage key from `source`.
pub fn create_with(
    dir: &Path,
    device_name: &str,
    key: DeviceKey,
    mesh_id: MeshId,
    root_id: DeviceId,
    source: &KeySource,
) -> Result<Database, OpenError> {
    let io_err = |source| OpenError::Io {
        path: dir.to_owned(),
        source,
    };
    let path = store_path(dir);
    check_creatable(dir)?;
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let (storage_key, key_meta) = match source {
        KeySource::KeyFile => (StorageKey::random(), vec![]),
        KeySource::Passphrase(p) => {
            let salt: [u8; SALT_BYTES] = seal::random();
            let params = KdfParams::DEFAULT;
            let k = StorageKey::from_passphrase(p, &salt, params)
                .map_err(|e| OpenError::storage(&path, e))?;
            (
                k,
                vec![
                    (meta_key::KDF_SALT, salt.to_vec()),
                    (meta_key::KDF_PARAMS, params.to_bytes().to_vec()),
                ],
            )
        }
    };
    let db = builder()
        .create(&path)
        .map_err(|e| map_db_error(&path, e))?;
    if let KeySource::KeyFile = source {
        write_key_file(dir, &storage_key).map_err(io_err)?;
    }
    let sealer = Sealer::new(&storage_key);
    let sealed = |k: &str, v: &[u8]| sealer.seal(META.name(), k.as_bytes(), v);
    let tx = db.begin_write().map_err(|e| OpenError::storage(&path, e))?;
    {
        let mut meta = tx
            .open_table(META)
            .map_err(|e| OpenError::storage(&path, e))?;
        let prefix = receipt_prefix(device_name);
        let secret = key.secret();
        let source_tag = match source {
            KeySource::KeyFile => KEY_SOURCE_FILE,
            KeySource::Passphrase(_) => KEY_SOURCE_PASSPHRASE,
        };
        for (k, v) in [
            (meta_key::FORMAT, FORMAT_V3.to_vec()),
            (meta_key::KEY_SOURCE, source_tag.to_vec()),
            (
                meta_key::KEY_CHECK,
                sealed(meta_key::KEY_CHECK, KEY_CHECK_TEXT),
            ),
            (
                meta_key::DEVICE_SECRET,
                sealed(meta_key::DEVICE_SECRET, &secret[..]),
            ),
            (
                meta_key::DEVICE_NAME,
                sealed(meta_key::DEVICE_NAME, device_name.as_bytes()),
            ),
            (meta_key::MESH_ID, mesh_id.as_bytes().to_vec()),
            (meta_key::ROOT_ID, root_id.as_bytes().to_vec()),
            (
                meta_key::RECEIPT_PREFIX,
                sealed(meta_key::RECEIPT_PREFIX, prefix.as_bytes()),
            ),
        ]
        .into_iter()
        .chain(key_meta)
        {
            meta.insert(k, v.as_slice())
                .map_err(|e| OpenError::storage(&path, e))?;
        }
    }
    tables::create_all(&tx).map_err(|e| OpenError::storage(&path, e))?;
    tx.commit().map_err(|e| OpenError::storage(&path, e))?;
    Ok(db)
}

/// Writes a new key file, owner-only from the moment it exists, and makes it durable.
fn write_key_file(dir: &Path, key: &StorageKey) -> io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(dir.join(KEY_FILE))?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the key file. Refuses one other users can read: a key anyone may copy protects
/// nothing, and refusing is the only way the owner hears of it on an unattended till.
fn read_key_file(dir: &Path) -> Result<StorageKey, OpenError> {
    let path = dir.join(KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OpenError::KeyFileMissing(path));
        }
        Err(source) => return Err(OpenError::Io { path, source }),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(OpenError::KeyFileExposed(path));
        }
    }
    let key = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| OpenError::NotOurs {
        path: path.clone(),
        why: format!("{KEY_FILE} holds {} bytes, not 32", bytes.len()),
    })?;
    Ok(StorageKey::from_bytes(key))
}

/// Opens an existing store and reads the device's identity from it.
pub fn open(
    dir: &Path,
    source: &KeySource,
) -> Result<(Database, Identity, Arc<Sealer>), OpenError> {
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
    let (identity, sealer) = read_identity(&db, &path, dir, source)?;
    Ok((db, identity, Arc::new(sealer)))
}

fn read_identity(
    db: &Database,
    path: &Path,
    dir: &Path,
    source: &KeySource,
) -> Result<(Identity, Sealer), OpenError> {
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
    if format != FORMAT_V3 {
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
    let storage_key = match (get(meta_key::KEY_SOURCE)?.as_deref(), source) {
        (Some(KEY_SOURCE_FILE), KeySource::KeyFile) => read_key_file(dir)?,
        (Some(KEY_SOURCE_FILE), KeySource::Passphrase(_)) => {
            return Err(OpenError::NoPassphrase(dir.to_owned()));
        }
        (Some(KEY_SOURCE_PASSPHRASE), KeySource::KeyFile) => {
            return Err(OpenError::PassphraseNeeded(dir.to_owned()));
        }
        (Some(KEY_SOURCE_PASSPHRASE), KeySource::Passphrase(p)) => {
            let salt = get(meta_key::KDF_SALT)?
                .and_then(|v| <[u8; SALT_BYTES]>::try_from(v.as_slice()).ok())
                .ok_or_else(|| not_ours("missing or damaged 'kdf_salt'"))?;
            let params = get(meta_key::KDF_PARAMS)?
                .and_then(|v| KdfParams::from_bytes(&v))
                .ok_or_else(|| not_ours("missing or damaged 'kdf_params'"))?;
            StorageKey::from_passphrase(p, &salt, params)
                .map_err(|e| OpenError::storage(path, e))?
        }
        _ => return Err(not_ours("missing or damaged 'key_source'")),
    };
    let sealer = Sealer::new(&storage_key);
    let opened = |k: &str| -> Result<Vec<u8>, OpenError> {
        let v = get(k)?.ok_or_else(|| not_ours(&format!("missing '{k}'")))?;
        sealer
            .open(META.name(), k.as_bytes(), &v)
            .map_err(|_| OpenError::WrongKey(dir.to_owned()))
    };
    // Checked first, so a wrong key is told as such rather than as a damaged record.
    if opened(meta_key::KEY_CHECK)? != KEY_CHECK_TEXT {
        return Err(OpenError::WrongKey(dir.to_owned()));
    }
    let text = |k: &str| -> Result<String, OpenError> {
        String::from_utf8(opened(k)?).map_err(|_| not_ours(&format!("damaged '{k}'")))
    };
    let secret = <[u8; 32]>::try_from(opened(meta_key::DEVICE_SECRET)?.as_slice())
        .map_err(|_| not_ours("damaged 'device_secret'"))?;
    let key = DeviceKey::from_secret(secret);
    let identity = Identity {
        device_id: key.device_id(),
        key,
        device_name: text(meta_key::DEVICE_NAME)?,
        mesh_id: MeshId(arr32(meta_key::MESH_ID)?),
        root_id: DeviceId(arr32(meta_key::ROOT_ID)?),
        receipt_prefix: text(meta_key::RECEIPT_PREFIX)?,
    };
    Ok((identity, sealer))
}

/// The open database, shared by the writer and every reader.
///
/// redb refuses every later write on a handle that once failed to write (a full disk, say), so
/// after such a failure the writer closes and reopens it here; readers wait for the swap.
pub struct Shared {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    sealer: Arc<Sealer>,
}

/// How long a reopen waits for readers to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    pub fn new(dir: &Path, db: Database, sealer: Arc<Sealer>) -> Self {
        Shared {
            path: store_path(dir),
            db: RwLock::new(Some(Arc::new(db))),
            sealer,
        }
    }

    /// Seals and opens the store's business data.
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    /// A read-side sealed table.
    pub fn sealed<K: redb::Key + 'static>(
        &self,
        table: redb::ReadOnlyTable<K, &'static [u8]>,
    ) -> tables::SealedReadOnly<K> {
        tables::Sealed::new(table, &self.sealer)
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
