//! E-mail channel for pinpost: SMTP submission of OpenPGP-encrypted PIN notices
