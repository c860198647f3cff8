//! Pager channel for pinpost: SNPP (RFC 1861) and TAP/IXO 1.8
