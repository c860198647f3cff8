#!/usr/bin/perl
# SNPP test peer for pinpost-pager: Net::SNPP::Server (Debian libnet-snpp-perl) on a loopback
# port, a process per connection. Every page it takes is appended to --out as one JSON line,
# {"pager": "...", "message": "..."}; the message keeps the line breaks DATA carried.
#
# Prints "LISTENING <port>" on stdout once it listens; exits when its stdin closes.
#
#   --out FILE          where pages go (required)
#   --port N            port to listen on (default: any free one)
#   --invalid ID        answer PAGE ID with 550 (repeatable)
#   --fail ID           answer SEND with 554 when ID is a recipient (repeatable)
#   --reply CMD=TEXT    answer CMD (four letters) with TEXT, e.g. 'SEND=450 Busy' (repeatable)
#   --login USER:PASS   take LOGI USER PASS (250), refuse anything else (550)
#   --timeout SECS      idle timeout per connection; the library then sends 421 (default 30)
#   --max-errors N      after N errors the library sends 421 and closes
#   --verbose           the library's log on stderr (it shows message texts)
use strict;
use warnings;

use Fcntl qw(:flock);
use Getopt::Long;
use IO::Select;
use JSON::PP;
use Net::SNPP::Server;
use Socket qw(unpack_sockaddr_in);

my ( $out, $port, @invalid, @fail, @reply, $login, $timeout, $max_errors, $verbose );
GetOptions(
    'out=s'        => \$out,
    'port=i'       => \$port,
    'invalid=s'    => \@invalid,
    'fail=s'       => \@fail,
    'reply=s'      => \@reply,
    'login=s'      => \$login,
    'timeout=i'    => \$timeout,
    'max-errors=i' => \$max_errors,
    'verbose'      => \$verbose,
) or die "bad arguments\n";
die "--out FILE is required\n" unless defined $out;

my $server = Net::SNPP::Server->new(
    Port      => $port // 0,
    BindTo    => '127.0.0.1',
    Timeout   => $timeout // 30,
    MaxErrors => $max_errors // 0,
);

my %invalid = map { $_ => 1 } @invalid;
my %fail    = map { $_ => 1 } @fail;
my $json    = JSON::PP->new->canonical->utf8(0);

$server->callback( 'write_log', sub { print STDERR "snpp-server: @_\n" if $verbose } );

# The library's own check takes seven or more digits; --invalid adds refusals on top.
$server->callback(
    'validate_pager_id',
    sub {
        my ($id) = @_;
        return undef if !defined $id || $invalid{$id} || $id !~ /^\d{7,}$/;
        return $id;
    }
);

$server->callback(
    'process_page',
    sub {
        my ( $pgr, $page, $results ) = @_;
        my $id = $pgr->[0];
        return 0 if $fail{$id};
        my $message = $page->{mess};
        $message =~ s/\n\z//;    # DATA leaves the last line break in
        open( my $fh, '>>', $out ) or die "$out: $!";
        flock( $fh, LOCK_EX );
        print $fh $json->encode( { pager => $id, message => $message } ), "\n";
        close($fh);
        push( @$results, [ $pgr, $page ] );
        return 1;
    }
);

if ( defined $login ) {
    my ( $user, $pass ) = split( /:/, $login, 2 );
    $server->custom_command(
        'LOGI',
        sub {
            my ( $u, $p ) = @_;
            if ( defined $u && $u eq $user && ( $p // '' ) eq ( $pass // '' ) ) {
                return ( '250 Login Accepted', 1 );
            }
            return ( '550 Login Failed', 1 );
        }
    );
}

for my $r (@reply) {
    my ( $cmd, $text ) = split( /=/, $r, 2 );
    die "--reply wants CMD=TEXT\n" unless defined $text && length($cmd) == 4;
    $server->disable_command( $cmd, $text );
}

my ($bound) = unpack_sockaddr_in( getsockname( $server->socket() ) );
$| = 1;
print "LISTENING $bound\n";

$SIG{CHLD} = 'IGNORE';
my $select = IO::Select->new( $server->socket(), \*STDIN );
while (1) {
    for my $fh ( $select->can_read() ) {
        if ( fileno($fh) == fileno(STDIN) ) {
            my $n = sysread( STDIN, my $buf, 512 );
            exit 0 unless $n;
            next;
        }
        my $client = $server->client();
        my $pid    = fork();
        die "fork: $!" unless defined $pid;
        if ( $pid == 0 ) {
            close(STDIN);
            $server->handle_client($client);
            exit 0;
        }
        $client->close();
    }
}
