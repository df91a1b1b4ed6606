//! The objects a run keeps: the history reachable from the tips, down to shallow boundaries.

use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;

use super::{Error, ErrorKind};

/// The objects that counting has to expand: every commit reachable from `tips` without crossing
/// shallow boundaries, plus annotated tags and any non-commit tips. Parents are not expanded by
/// counting itself as that would require parents of shallow commits to exist.
pub(super) fn reachable_roots(
    odb: &gix::odb::Handle,
    tips: &[ObjectId],
    shallow: &[ObjectId],
    object_hash: gix::hash::Kind,
    should_interrupt: &AtomicBool,
) -> Result<Vec<ObjectId>, Error> {
    use gix::objs::Kind;

    let mut buf = Vec::new();
    let mut seen = gix::hashtable::HashSet::default();
    let mut pending = Vec::new();
    let mut roots = Vec::new();
    for tip in tips {
        let mut id = *tip;
        loop {
            let data = find(odb, &id, &mut buf, should_interrupt)?;
            match data.kind {
                Kind::Tag => {
                    if seen.insert(id) {
                        roots.push(id);
                    }
                    id = gix::objs::TagRefIter::from_bytes(data.data, object_hash)
                        .target_id()
                        .map_err(|err| {
                            Error::gix(
                                &format!("could not decode tag {id}"),
                                &err,
                                should_interrupt,
                            )
                        })?;
                }
                Kind::Commit => {
                    if seen.insert(id) {
                        pending.push(id);
                    }
                    break;
                }
                Kind::Tree | Kind::Blob => {
                    if seen.insert(id) {
                        roots.push(id);
                    }
                    break;
                }
            }
        }
    }

    while let Some(id) = pending.pop() {
        if roots.len() % 1024 == 0 && should_interrupt.load(Ordering::Relaxed) {
            return Err(Error::interrupted());
        }
        let data = find(odb, &id, &mut buf, should_interrupt)?;
        if data.kind != Kind::Commit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("object {id} is a {} where a commit was expected", data.kind),
            ));
        }
        roots.push(id);
        if shallow.binary_search(&id).is_ok() {
            // Parents of shallow commits are absent by design; git stops here too.
            continue;
        }
        for token in gix::objs::CommitRefIter::from_bytes(data.data, object_hash) {
            match token {
                Ok(gix::objs::commit::ref_iter::Token::Tree { .. }) => {}
                Ok(gix::objs::commit::ref_iter::Token::Parent { id: parent }) => {
                    if seen.insert(parent) {
                        pending.push(parent);
                    }
                }
                Ok(_) => break,
                Err(err) => {
                    return Err(Error::gix(
                        &format!("could not decode commit {id}"),
                        &err,
                        should_interrupt,
                    ));
                }
            }
        }
    }
    Ok(roots)
}

/// Look up `id`, treating absence as corruption since every caller follows a reference to it.
pub(super) fn find<'a>(
    odb: &gix::odb::Handle,
    id: &ObjectId,
    buf: &'a mut Vec<u8>,
    should_interrupt: &AtomicBool,
) -> Result<gix::objs::Data<'a>, Error> {
    match gix::objs::Find::try_find(odb, id, buf) {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(Error::new(
            ErrorKind::Corrupt,
            format!("object {id} is missing"),
        )),
        Err(err) => Err(Error::gix(
            &format!("could not read object {id}"),
            &err,
            should_interrupt,
        )),
    }
}
