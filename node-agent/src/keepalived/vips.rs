//! Which addresses the kernel has on this host's interfaces, read over rtnetlink (the same
//! source as `ip -j addr`). This is the ground truth of who holds a VIP.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

/// A netlink route socket of this process's network namespace.
pub struct AddressTable {
    handle: rtnetlink::Handle,
}

impl AddressTable {
    /// Opens the socket and spawns its connection task on the current tokio runtime.
    pub fn open() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(AddressTable { handle })
    }

    /// Every address on every interface, IPv4 and IPv6.
    pub async fn addresses(&self) -> Result<BTreeSet<IpAddr>, rtnetlink::Error> {
        let mut stream = self.handle.address().get().execute();
        let mut out = BTreeSet::new();
        while let Some(message) = stream.try_next().await? {
            for attribute in message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        out.insert(ip);
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

impl AddressTable {
    /// Removes `ip` from the interface that has it (`ip addr del`); false when no interface has
    /// it.
    pub async fn remove(&self, ip: IpAddr) -> Result<bool, rtnetlink::Error> {
        let mut stream = self.handle.address().get().execute();
        let mut found = None;
        while let Some(message) = stream.try_next().await? {
            let holds = message.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(a) | AddressAttribute::Address(a) if *a == ip)
            });
            if holds {
                found = Some(message);
                break;
            }
        }
        drop(stream);
        match found {
            Some(message) => {
                self.handle.address().del(message).execute().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_the_loopback_address() {
        let table = AddressTable::open().unwrap();
        let addresses = table.addresses().await.unwrap();
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
