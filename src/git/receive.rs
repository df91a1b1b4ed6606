//! One fetch over an established connection: handshake, list the remote's refs, negotiate,
//! write the pack and its index, and move the tracked ref.
//!
//! gix's own `receive` does the same, but always writes the pack with gix's bundle writer,
//! which keeps every entry's compressed bytes in memory, reads the next entry before letting
//! the current one go, and then inflates each object whole to index it: a fetch held the
//! largest objects of the pack several times over. Driving gix's protocol layer directly lets
//! gitfeed write the pack with its own streaming [`indexer`], which holds no object whole
//! unless a delta needs it. A thin pack is still completed by gix, from the repository's
//! objects.

use std::sync::atomic::Ordering;

use gix::bstr::ByteSlice;
use gix::error::ErrorExt;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::remote::fetch::Shallow;

use super::{Call, Cancel, FetchError, MANY_REFS, Target, error, indexer, missing_ref};
use crate::reason::Reason;

/// How gitfeed names itself to servers.
const USER_AGENT: &str = concat!("gitfeed/", env!("CARGO_PKG_VERSION"));

/// How [`receive`] ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The source's tip ref points at the remote's object, named by the ref's name on the
    /// remote.
    Received(String),
    /// The ref moved, and bringing it needs protocol v2, which this connection does not
    /// speak: a shallow fetch (over v1 one brought the whole history and no `shallow` file).
    /// Nothing was written; the caller connects again asking for v2.
    NeedsV2,
}

/// Negotiates and receives the pack over `transport`, then points the source's tip ref at the remote's
/// object. `options` configure the transport (HTTP).
#[allow(clippy::too_many_arguments)]
pub(super) fn receive<T: Transport>(
    repo: &gix::Repository,
    connection: gix::remote::Connection<'_, '_, '_, T>,
    options: Option<Box<dyn std::any::Any>>,
    target: &Target,
    call: &Call,
    shallow: Shallow,
    cancel: &Cancel,
    ours: Option<gix::ObjectId>,
) -> Result<Outcome, FetchError> {
    let wanted = target.reference.as_deref().unwrap_or("HEAD");
    let classify = |err: gix::Error| error::classify(&err, target, cancel);
    let mut connection = connection;
    let fetch_specs = connection
        .remote()
        .refspecs(gix::remote::Direction::Fetch)
        .to_vec();
    let mut authenticate = connection.configured_credentials_for_current_url();
    let transport = connection.transport_mut();
    let options = match options {
        Some(options) => Some(options),
        None => repo
            .transport_options(transport.to_url().as_ref(), None)
            .map_err(classify)?,
    };
    if let Some(options) = options {
        transport.configure(&*options).map_err(|err| {
            FetchError::new(
                Reason::Configuration,
                format!("cannot configure the transport: {err}"),
            )
        })?;
    }
    let mut progress = gix::progress::Discard;
    let mut handshake = gix::protocol::handshake(
        &mut *transport,
        gix::protocol::transport::Service::UploadPack,
        &mut authenticate,
        Vec::new(),
        &mut progress,
    )
    .map_err(classify)?;
    let user_agent = ("agent", Some(USER_AGENT.to_owned()));
    let mut ref_map = handshake
        .prepare_lsrefs_or_extract_refmap(
            user_agent.clone(),
            true,
            gix::protocol::fetch::refmap::init::Context {
                fetch_refspecs: fetch_specs,
                extra_refspecs: Vec::new(),
            },
        )
        .map_err(classify)?
        .fetch_blocking(&mut progress, &mut *transport, false)
        .map_err(classify)?;
    if ref_map.remote_refs.len() > MANY_REFS {
        target.many_refs.store(true, Ordering::Relaxed);
    }
    if ref_map.object_hash != repo.object_hash() {
        return Err(FetchError::new(
            Reason::UnsupportedRemote,
            format!(
                "the remote's objects are named with {}, the clone's with {}",
                ref_map.object_hash,
                repo.object_hash()
            ),
        ));
    }
    if super::is_bare_name(wanted) {
        // Asked for as both a branch and a tag: the branch wins, as with `git clone --branch`,
        // and only the winner is negotiated.
        let branch = format!("refs/heads/{wanted}");
        let is_branch = |mapping: &gix::protocol::fetch::refmap::Mapping| {
            mapping
                .remote
                .as_name()
                .is_some_and(|name| name == branch.as_bytes())
        };
        if ref_map.mappings.iter().any(is_branch) {
            ref_map.mappings.retain(is_branch);
        }
        ref_map.mappings.truncate(1);
    }
    let Some(mapping) = ref_map.mappings.first() else {
        return Err(missing_ref(wanted, call.seen_before));
    };
    // The name comes from the remote: only a valid ref name is passed on to the consumer.
    let valid = |name: &gix::bstr::BStr| gix::validate::reference::name(name).is_ok();
    let remote_name = match (mapping.remote.as_target(), mapping.remote.as_name()) {
        (Some(target), _) if valid(target) => target.to_str_lossy().into_owned(),
        (None, Some(name)) if valid(name) => name.to_str_lossy().into_owned(),
        (None, None) => wanted.to_owned(),
        (_, name) => {
            return Err(FetchError::new(
                Reason::UnsupportedRemote,
                format!(
                    "the remote names `{wanted}` with an invalid ref name ({:?})",
                    name.map(|name| name.to_str_lossy())
                ),
            ));
        }
    };
    let Some(theirs) = mapping.remote.as_id().map(ToOwned::to_owned) else {
        return Err(FetchError::new(
            Reason::UnsupportedRemote,
            format!("`{remote_name}` on the remote has no commits yet"),
        ));
    };
    if Some(theirs) == ours {
        // Nothing moved: end the conversation here instead of negotiating and updating the
        // ref to where it already points.
        return Ok(Outcome::Received(remote_name));
    }
    if call.peek {
        // A look without the clone's lock: it must not write, so it ends where a fetch would
        // begin.
        return Err(FetchError::new(
            Reason::Other,
            format!("`{remote_name}` moved"),
        ));
    }
    if shallow != Shallow::NoChange
        && handshake.server_protocol_version != gix::protocol::transport::Protocol::V2
    {
        return Ok(Outcome::NeedsV2);
    }

    let mut graph = repo.revision_graph(None);
    let mut negotiate = Negotiate {
        repo,
        graph: &mut graph,
        ref_map: &ref_map,
        shallow: &shallow,
        negotiator: gix::negotiate::Algorithm::Consecutive.into_negotiator(),
    };
    let pack_dir = repo.objects.store_ref().path().join("pack");
    let mut written: Option<Received> = None;
    let outcome = gix::protocol::fetch(
        &mut negotiate,
        |reader, progress, should_interrupt| {
            let received = receive_pack(
                repo,
                reader,
                progress,
                should_interrupt,
                &pack_dir,
                target,
                &call.progress,
            );
            call.progress.done();
            written = received?;
            Ok(true)
        },
        gix::progress::Discard,
        cancel.flag(),
        gix::protocol::fetch::Context {
            handshake: &mut handshake,
            transport: &mut *transport,
            user_agent,
            trace_packetlines: false,
        },
        gix::protocol::fetch::Options {
            shallow_file: repo.shallow_file().map_err(classify)?,
            shallow: &shallow,
            tags: gix::remote::fetch::Tags::None,
            reject_shallow_remote: false,
        },
    )
    .map_err(classify)?;
    drop(negotiate);
    if handshake.server_protocol_version == gix::protocol::transport::Protocol::V2 {
        // Tell a server that keeps the connection that this is the end; failing that is harmless.
        let _ = gix::protocol::indicate_end_of_interaction(&mut *transport, false);
    }
    let _ = outcome;
    if let Some(received) = &written {
        // The driver cuts off a pack that grows past the limit while it arrives; one that
        // arrived faster than it looks is caught here and its files removed at once.
        let size = std::fs::metadata(&received.data_path).map_or(0, |metadata| metadata.len());
        if size > target.max_pack_size {
            if received.created {
                for path in [
                    &received.data_path,
                    &received.data_path.with_extension("idx"),
                ] {
                    let _ = std::fs::remove_file(path);
                }
            }
            return Err(FetchError::new(
                Reason::RemoteTooLarge,
                format!(
                    "the remote sent a {size}-byte pack, more than max_pack_size ({} bytes); \
                     raise it if the repository really is that large",
                    target.max_pack_size
                ),
            ));
        }
    }
    if !repo.has_object(theirs) {
        return Err(FetchError::new(
            Reason::Protocol,
            format!("the remote did not send `{remote_name}` ({theirs})"),
        ));
    }
    repo.reference(
        target.tip_ref.as_str(),
        theirs,
        gix::refs::transaction::PreviousValue::Any,
        format!("fetch: {remote_name}"),
    )
    .map_err(|err| {
        FetchError::new(
            Reason::LocalIo,
            format!(
                "the local copy of `{remote_name}` was not updated: {}",
                error::describe(&err)
            ),
        )
    })?;
    Ok(Outcome::Received(remote_name))
}

/// A pack in place in the repository.
struct Received {
    data_path: std::path::PathBuf,
    /// Whether this attempt put it there, and so may remove it.
    created: bool,
}

/// Writes and indexes the pack `reader` delivers, counting what arrives in `counter`; a thin
/// pack is completed from the repository's objects by gix. `None` for an empty pack.
fn receive_pack(
    repo: &gix::Repository,
    reader: &mut dyn std::io::BufRead,
    progress: &mut dyn gix::progress::DynNestedProgress,
    should_interrupt: &std::sync::atomic::AtomicBool,
    pack_dir: &std::path::Path,
    target: &Target,
    counter: &crate::progress::Counter,
) -> gix::Result<Option<Received>> {
    let object_hash = repo.object_hash();
    match indexer::write(
        reader,
        pack_dir,
        target.index_threads,
        object_hash,
        should_interrupt,
        counter,
    ) {
        Ok(written) => Ok(written.map(|written| Received {
            data_path: written.data_path,
            created: written.created,
        })),
        Err(indexer::Failure::Other(err)) => Err(err),
        Err(indexer::Failure::Thin(path)) => {
            // The thin pack's bases are looked up in the repository; see `indexer`.
            let thin_options = gix_pack::bundle::write::Options {
                thread_limit: Some(target.index_threads),
                iteration_mode: gix_pack::data::input::Mode::Verify,
                index_version: gix_pack::index::Version::V2,
                alloc_limit_bytes: None,
                compression: gix::zlib::Compression::BEST_SPEED,
            };
            let result = std::fs::File::open(&path)
                .map_err(ErrorExt::raise)
                .and_then(|file| {
                    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
                    gix_pack::Bundle::write_to_directory(
                        &mut reader,
                        Some(pack_dir),
                        progress,
                        should_interrupt,
                        Some(repo.objects.clone()),
                        object_hash,
                        thin_options,
                    )
                });
            let _ = std::fs::remove_file(&path);
            let bundle = result?;
            // gix's `.keep` file protects the pack until a ref points into it; this attempt
            // holds the clone's lock until then, and a `.keep` left behind by an error would
            // shield the pack from consolidation for ever.
            if let Some(keep) = &bundle.keep_path {
                let _ = std::fs::remove_file(keep);
            }
            Ok(bundle.data_path.map(|data_path| Received {
                data_path,
                created: true,
            }))
        }
    }
}

/// gix's negotiation steps over this repository's objects and refs, for one wanted ref.
struct Negotiate<'a, 'g, 'c> {
    repo: &'a gix::Repository,
    graph: &'a mut gix::negotiate::Graph<'g, 'c>,
    ref_map: &'a gix::protocol::fetch::RefMap,
    shallow: &'a Shallow,
    negotiator: Box<dyn gix::negotiate::Negotiator>,
}

impl gix::protocol::fetch::Negotiate for Negotiate<'_, '_, '_> {
    fn mark_complete_and_common_ref(
        &mut self,
    ) -> gix::Result<gix::protocol::fetch::negotiate::Action> {
        gix::protocol::fetch::negotiate::mark_complete_and_common_ref(
            &self.repo.objects,
            &self.repo.refs,
            // Caches never borrow objects from other repositories.
            || Ok(std::iter::empty::<(gix::refs::file::Store, gix::odb::Handle)>()),
            self.negotiator.as_mut(),
            self.graph,
            self.ref_map,
            self.shallow,
            |_| false,
        )
    }

    fn add_wants(
        &mut self,
        arguments: &mut gix::protocol::fetch::Arguments,
        remote_ref_target_known: &[bool],
    ) -> bool {
        gix::protocol::fetch::negotiate::add_wants(
            &self.repo.objects,
            arguments,
            self.ref_map,
            remote_ref_target_known,
            self.shallow,
            |_| false,
        )
    }

    fn one_round(
        &mut self,
        state: &mut gix::protocol::fetch::negotiate::one_round::State,
        arguments: &mut gix::protocol::fetch::Arguments,
        previous_response: Option<&gix::protocol::fetch::Response>,
    ) -> gix::Result<(gix::protocol::fetch::negotiate::Round, bool)> {
        gix::protocol::fetch::negotiate::one_round(
            self.negotiator.as_mut(),
            self.graph,
            state,
            arguments,
            previous_response,
        )
    }
}
