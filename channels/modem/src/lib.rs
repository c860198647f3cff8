//! AT-command engine shared by pinpost's fax and TAP pager drivers
