//! [`SnapshotData`]: the bytes of a snapshot as openraft reads, seeks and writes them.
//!
//! A snapshot being received is a growable buffer openraft writes the chunks into. A
//! snapshot being sent is a [`SharedBytes`]: one copy of the bytes shared by every follower
//! it goes to (and by the group's current snapshot), possibly still being built by a job off
//! openraft's state machine worker: a read or a seek waits for the build, so the worker that
//! hands the snapshot out (and applies the group's entries) never does.
use std::{
    future::Future,
    io::{self, Cursor, SeekFrom},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// What a build ends with: the bytes, or why there are none.
pub(crate) type Built = Result<Arc<Vec<u8>>, Arc<str>>;

/// A snapshot's bytes, built or being built; cheap to clone (every clone waits for the
/// same build).
#[derive(Clone)]
pub(crate) struct SharedBytes {
    build: Shared<BoxFuture<'static, Built>>,
    /// What `build` ended with, once this handle saw it (a `Shared` handle that completed
    /// must not be polled again).
    done: Option<Built>,
}

impl SharedBytes {
    /// Bytes that are already there.
    pub(crate) fn ready(bytes: Arc<Vec<u8>>) -> Self {
        Self::building(futures::future::ready(Ok(bytes)))
    }

    /// The bytes `build` ends with (it runs only while someone polls it: spawn the work and
    /// pass the future that waits for it).
    pub(crate) fn building(build: impl Future<Output = Built> + Send + 'static) -> Self {
        Self {
            build: build.boxed().shared(),
            done: None,
        }
    }

    /// Waits for the build.
    pub(crate) async fn get(&self) -> Built {
        match &self.done {
            Some(built) => built.clone(),
            None => self.build.clone().await,
        }
    }

    /// The bytes if the build ended with them (and was waited for).
    #[cfg(test)]
    pub(crate) fn now(&self) -> Option<Arc<Vec<u8>>> {
        let built = self.done.as_ref().or(self.build.peek());
        built.and_then(|built| built.as_ref().ok().cloned())
    }

    /// Whether the build ended without bytes (as a reader that waited for it saw).
    pub(crate) fn failed(&self) -> bool {
        let built = self.done.as_ref().or(self.build.peek());
        built.is_some_and(Result::is_err)
    }

    fn poll_get(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Arc<Vec<u8>>>> {
        let built = match &self.done {
            Some(built) => built.clone(),
            None => match Pin::new(&mut self.build).poll(cx) {
                Poll::Ready(built) => self.done.insert(built).clone(),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(
            built.map_err(|reason| {
                io::Error::other(format!("building the snapshot failed: {reason}"))
            }),
        )
    }
}

/// openraft's `SnapshotData` of every group.
pub(crate) struct SnapshotData(State);

enum State {
    /// Being received: the chunks are written here.
    Receiving(Cursor<Vec<u8>>),
    /// Being sent (read-only).
    Sending {
        bytes: SharedBytes,
        pos: u64,
        seek: Option<SeekFrom>,
    },
}

impl SnapshotData {
    /// An empty buffer to receive a snapshot into.
    pub(crate) fn receiving() -> Self {
        Self(State::Receiving(Cursor::new(Vec::new())))
    }

    /// A reader of `bytes` from their start.
    pub(crate) fn sending(bytes: SharedBytes) -> Self {
        Self(State::Sending {
            bytes,
            pos: 0,
            seek: None,
        })
    }

    /// The whole snapshot (waiting for its build if it is being sent).
    pub(crate) async fn into_bytes(self) -> io::Result<Arc<Vec<u8>>> {
        match self.0 {
            State::Receiving(cursor) => Ok(Arc::new(cursor.into_inner())),
            State::Sending { mut bytes, .. } => std::future::poll_fn(|cx| bytes.poll_get(cx)).await,
        }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            State::Receiving(c) => {
                write!(f, "SnapshotData::Receiving({} bytes)", c.get_ref().len())
            }
            State::Sending { pos, .. } => write!(f, "SnapshotData::Sending(at {pos})"),
        }
    }
}

/// `base + offset`, refused when it falls before the start (or overflows).
fn offset(base: u64, offset: i64) -> io::Result<u64> {
    base.checked_add_signed(offset).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("seek to {base} {offset:+} is outside the snapshot"),
        )
    })
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Receiving(cursor) => Pin::new(cursor).poll_read(cx, buf),
            State::Sending { bytes, pos, .. } => {
                let all = match bytes.poll_get(cx) {
                    Poll::Ready(Ok(all)) => all,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                let start = usize::try_from(*pos).unwrap_or(usize::MAX).min(all.len());
                let n = buf.remaining().min(all.len() - start);
                buf.put_slice(&all[start..start + n]);
                *pos += n as u64;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().0 {
            State::Receiving(cursor) => Pin::new(cursor).start_seek(position),
            State::Sending { seek, .. } => {
                *seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match &mut self.get_mut().0 {
            State::Receiving(cursor) => Pin::new(cursor).poll_complete(cx),
            State::Sending { bytes, pos, seek } => {
                let Some(to) = *seek else {
                    return Poll::Ready(Ok(*pos));
                };
                let len = match bytes.poll_get(cx) {
                    Poll::Ready(Ok(all)) => all.len() as u64,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                *seek = None;
                let at = match to {
                    SeekFrom::Start(at) => Ok(at),
                    SeekFrom::End(delta) => offset(len, delta),
                    SeekFrom::Current(delta) => offset(*pos, delta),
                };
                Poll::Ready(at.inspect(|&at| *pos = at))
            }
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            State::Receiving(cursor) => Pin::new(cursor).poll_write(cx, buf),
            State::Sending { .. } => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a snapshot being sent is read-only",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[derive(Debug, Clone)]
    enum Op {
        Seek(SeekFrom),
        Read(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..300).prop_map(|at| Op::Seek(SeekFrom::Start(at))),
            (-300i64..50).prop_map(|d| Op::Seek(SeekFrom::End(d))),
            (-300i64..300).prop_map(|d| Op::Seek(SeekFrom::Current(d))),
            (0usize..120).prop_map(Op::Read),
        ]
    }

    proptest! {
        /// Reading and seeking a snapshot being sent behaves exactly as a cursor over the
        /// same bytes: same positions, same bytes, refused where the cursor refuses.
        #[test]
        fn a_sent_snapshot_reads_and_seeks_like_a_cursor(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            runtime().block_on(async {
                let mut ours = SnapshotData::sending(SharedBytes::ready(Arc::new(bytes.clone())));
                let mut model = Cursor::new(bytes.clone());
                for op in ops {
                    match op {
                        Op::Seek(to) => {
                            let got = ours.seek(to).await.map_err(|e| e.kind());
                            let want = std::io::Seek::seek(&mut model, to).map_err(|e| e.kind());
                            prop_assert_eq!(got, want, "seek {:?}", to);
                        }
                        Op::Read(n) => {
                            let mut got = vec![0; n];
                            let mut want = vec![0; n];
                            let got_n = ours.read(&mut got).await.expect("read");
                            let want_n = std::io::Read::read(&mut model, &mut want).expect("read");
                            prop_assert_eq!(&got[..got_n], &want[..want_n]);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn a_read_waits_for_the_build_and_every_reader_shares_it() {
        runtime().block_on(async {
            let (done, built) = tokio::sync::oneshot::channel::<Vec<u8>>();
            let bytes = SharedBytes::building(async move {
                built.await.map(Arc::new).map_err(|_| Arc::from("gone"))
            });
            assert!(bytes.now().is_none());
            let mut first = SnapshotData::sending(bytes.clone());
            let mut second = SnapshotData::sending(bytes.clone());
            let end = tokio::time::timeout(Duration::from_millis(50), first.seek(SeekFrom::End(0)));
            assert!(
                end.await.is_err(),
                "the length is not known before the build ends"
            );
            done.send(b"snapshot".to_vec()).expect("send");
            assert_eq!(first.seek(SeekFrom::End(0)).await.expect("seek"), 8);
            let mut all = Vec::new();
            second.read_to_end(&mut all).await.expect("read");
            assert_eq!(all, b"snapshot");
            let shared = bytes.now().expect("built");
            let again = second.into_bytes().await.expect("bytes");
            assert!(Arc::ptr_eq(&shared, &again), "one copy of the bytes");
        });
    }

    #[test]
    fn a_failed_build_fails_reads_and_seeks_with_its_reason() {
        runtime().block_on(async {
            let bytes = SharedBytes::building(async { Err(Arc::from("the disk is gone")) });
            let mut data = SnapshotData::sending(bytes);
            let seek = data.seek(SeekFrom::End(0)).await.expect_err("no length");
            assert!(seek.to_string().contains("the disk is gone"), "{seek}");
            let mut buf = [0; 4];
            let read = data.read(&mut buf).await.expect_err("no bytes");
            assert!(read.to_string().contains("the disk is gone"), "{read}");
        });
    }

    #[test]
    fn a_received_snapshot_takes_chunks_at_their_offsets_and_a_sent_one_refuses_writes() {
        runtime().block_on(async {
            let mut received = SnapshotData::receiving();
            received.write_all(b"abc").await.expect("write");
            received.seek(SeekFrom::Start(2)).await.expect("seek");
            received.write_all(b"XYZ").await.expect("write");
            assert_eq!(*received.into_bytes().await.expect("bytes"), b"abXYZ");
            let mut sent = SnapshotData::sending(SharedBytes::ready(Arc::new(b"abc".to_vec())));
            let e = sent.write_all(b"x").await.expect_err("read-only");
            assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        });
    }
}
