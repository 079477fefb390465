//! A TCP relay with an off switch and fault knobs, placed between the proxy and PostgreSQL or
//! the mock upstream to stage outages: `cut()` kills every relayed connection and refuses new
//! ones until `restore()`; `set_fault()` decides how connections accepted from then on misbehave
//! on their way back to the proxy (reset, close or stall after some bytes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// How a relayed connection misbehaves. `n` is an upper bound: each connection picks its own
/// byte count in `0..=n` (spread by its accept order), so one setting covers many offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay both ways, untouched.
    None,
    /// After some upstream→proxy bytes, reset the proxy's side (RST).
    ResetAfter(usize),
    /// After some upstream→proxy bytes, close both sides (FIN).
    CloseAfter(usize),
    /// After some upstream→proxy bytes, relay nothing more back (the upstream "hangs"); the
    /// connection lives until the proxy closes it or `cut()`.
    StallAfter(usize),
}

pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
    fault: Arc<Mutex<Fault>>,
    accepted: Arc<AtomicUsize>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let fault = Arc::new(Mutex::new(Fault::None));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, l, f, a) = (open.clone(), live.clone(), fault.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let index = a.fetch_add(1, Ordering::SeqCst);
                let fault = *f.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        match fault {
                            Fault::None => {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                            _ => faulty(client, server, fault, index).await,
                        }
                    }
                });
                let mut live = l.lock().unwrap();
                live.retain(|t| !t.is_finished());
                live.push(task.abort_handle());
            }
        });
        Relay {
            addr,
            open,
            live,
            fault,
            accepted,
        }
    }

    /// Kill every relayed connection and refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.kill_live();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Misbehave this way on connections accepted from now on (live ones keep their fault;
    /// [`Relay::kill_live`] ends them).
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Kill every relayed connection, still accepting new ones.
    pub fn kill_live(&self) {
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Relay proxy→upstream untouched and upstream→proxy up to a byte budget, then apply `fault`.
async fn faulty(client: TcpStream, server: TcpStream, fault: Fault, index: usize) {
    let bound = match fault {
        Fault::None => return,
        Fault::ResetAfter(n) | Fault::CloseAfter(n) | Fault::StallAfter(n) => n,
    };
    // Spread offsets over 0..=bound by accept order (a multiplicative hash, so neighbours differ).
    let budget = index.wrapping_mul(2_654_435_761) % (bound + 1);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let budget_spent = {
        let up = async {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        };
        let down = async {
            let mut sent = 0usize;
            let mut buf = [0u8; 4096];
            while sent < budget {
                let want = (budget - sent).min(buf.len());
                match server_read.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return false;
                        }
                        sent += n;
                    }
                }
            }
            true
        };
        tokio::pin!(up, down);
        // Whichever ends first: the proxy closing its side ends the connection in every mode.
        tokio::select! {
            _ = &mut up => false,
            spent = &mut down => spent,
        }
    };
    if !budget_spent {
        return;
    }
    match fault {
        Fault::ResetAfter(_) => {
            if let Ok(stream) = client_read.reunite(client_write) {
                let _ = stream.set_zero_linger();
            }
        }
        Fault::CloseAfter(_) => {}
        Fault::StallAfter(_) => {
            // Hold the connection open, relaying nothing back, until the proxy gives up on it.
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            drop(client_write);
        }
        Fault::None => {}
    }
}
