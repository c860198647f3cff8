//! Fax channel for pinpost: PIN notice pages, T.4 MH encoding, Class 2.0 modems
