// Checks of etcd's Go client (go.etcd.io/etcd/clientv3 3.4, the client Kubernetes and most Go
// applications embed) against the endpoints given as arguments: KV and Txn, watches, leases
// and the concurrency package (Mutex, Election, STM, sessions whose lease expires). Each check
// prints "ok NAME" or "FAIL NAME: why"; the last line is "N passed, M failed", and the exit
// code is 1 when any failed. The expectations are etcd 3.4's: the test runs it against a real
// etcd first.
//
// Security settings come from the environment (as for the Python client's script):
// ETCD3_CA_CERT, ETCD3_CERT_CERT, ETCD3_CERT_KEY, ETCD3_USER, ETCD3_PASSWORD.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/ioutil"
	"os"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"go.etcd.io/etcd/mvcc/mvccpb"
)

var passed, failed int

func check(name string, err error) {
	if err != nil {
		failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return
	}
	passed++
	fmt.Printf("ok %s\n", name)
}

func expect(cond bool, format string, args ...interface{}) error {
	if cond {
		return nil
	}
	return fmt.Errorf(format, args...)
}

func config(endpoints []string) clientv3.Config {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second}
	if ca := os.Getenv("ETCD3_CA_CERT"); ca != "" {
		pem, err := ioutil.ReadFile(ca)
		if err != nil {
			panic(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cert, err := tls.LoadX509KeyPair(os.Getenv("ETCD3_CERT_CERT"), os.Getenv("ETCD3_CERT_KEY"))
		if err != nil {
			panic(err)
		}
		cfg.TLS = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}
	}
	cfg.Username = os.Getenv("ETCD3_USER")
	cfg.Password = os.Getenv("ETCD3_PASSWORD")
	return cfg
}

func client(endpoints ...string) *clientv3.Client {
	cli, err := clientv3.New(config(endpoints))
	if err != nil {
		fmt.Printf("cannot connect to %v: %v\n", endpoints, err)
		os.Exit(2)
	}
	return cli
}

func timeout(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	time.AfterFunc(d, cancel)
	return ctx
}

// nextEvents reads watch responses until n events arrived (or 10 s passed).
func nextEvents(wch clientv3.WatchChan, n int) ([]*clientv3.Event, error) {
	var evs []*clientv3.Event
	deadline := time.After(10 * time.Second)
	for len(evs) < n {
		select {
		case w, ok := <-wch:
			if !ok {
				return evs, fmt.Errorf("watch channel closed after %d events", len(evs))
			}
			if err := w.Err(); err != nil {
				return evs, err
			}
			evs = append(evs, w.Events...)
		case <-deadline:
			return evs, fmt.Errorf("%d of %d events within 10 s", len(evs), n)
		}
	}
	return evs, nil
}

func kv(cli *clientv3.Client) {
	ctx := timeout(10 * time.Second)
	p := "go/kv/"
	r1, err := cli.Put(ctx, p+"a", "1")
	check("put", err)
	if err != nil {
		return
	}
	_, err = cli.Put(ctx, p+"b", "2")
	check("put b", err)
	pr, err := cli.Put(ctx, p+"a", "11", clientv3.WithPrevKV())
	check("put with prev_kv", func() error {
		if err != nil {
			return err
		}
		return expect(pr.PrevKv != nil && string(pr.PrevKv.Value) == "1", "prev kv %v", pr.PrevKv)
	}())
	gr, err := cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	check("get prefix sorted", func() error {
		if err != nil {
			return err
		}
		return expect(gr.Count == 2 && string(gr.Kvs[0].Key) == p+"b" && string(gr.Kvs[1].Value) == "11" &&
			gr.Kvs[1].Version == 2, "got %v", gr.Kvs)
	}())
	gr, err = cli.Get(ctx, p+"a", clientv3.WithRev(r1.Header.Revision))
	check("get at a revision", func() error {
		if err != nil {
			return err
		}
		return expect(len(gr.Kvs) == 1 && string(gr.Kvs[0].Value) == "1", "got %v", gr.Kvs)
	}())
	gr, err = cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	check("count only", func() error {
		if err != nil {
			return err
		}
		return expect(gr.Count == 2 && len(gr.Kvs) == 0, "got count %d, %d kvs", gr.Count, len(gr.Kvs))
	}())
	gr, err = cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	check("limit and keys only", func() error {
		if err != nil {
			return err
		}
		return expect(gr.More && len(gr.Kvs) == 1 && len(gr.Kvs[0].Value) == 0, "more %v kvs %v", gr.More, gr.Kvs)
	}())
	gr, err = cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithSerializable())
	check("serializable get", func() error {
		if err != nil {
			return err
		}
		return expect(gr.Count == 2, "count %d", gr.Count)
	}())
	tr, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(p+"a"), "=", "11"), clientv3.Compare(clientv3.Version(p+"b"), ">", 0)).
		Then(clientv3.OpPut(p+"c", "3"), clientv3.OpGet(p, clientv3.WithPrefix())).
		Else(clientv3.OpDelete(p, clientv3.WithPrefix())).
		Commit()
	check("txn then", func() error {
		if err != nil {
			return err
		}
		return expect(tr.Succeeded && len(tr.Responses) == 2 && tr.Responses[1].GetResponseRange().Count == 3,
			"succeeded %v responses %v", tr.Succeeded, tr.Responses)
	}())
	tr, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(p+"zzz"), ">", 0)).
		Else(clientv3.OpGet(p+"c")).Commit()
	check("txn else", func() error {
		if err != nil {
			return err
		}
		return expect(!tr.Succeeded && string(tr.Responses[0].GetResponseRange().Kvs[0].Value) == "3", "got %v", tr)
	}())
	// etcd's --max-txn-ops (128).
	ops := make([]clientv3.Op, 129)
	for i := range ops {
		ops[i] = clientv3.OpPut(p+"many/"+strconv.Itoa(i), "v")
	}
	_, err = cli.Txn(ctx).Then(ops...).Commit()
	check("txn with too many operations refused", expect(err == rpctypes.ErrTooManyOps, "got %v", err))
	_, err = cli.Put(ctx, "", "v")
	check("empty key refused", expect(err == rpctypes.ErrEmptyKey, "got %v", err))
	_, err = cli.Put(ctx, p+"x", "v", clientv3.WithLease(clientv3.LeaseID(0x7fffffffffff)))
	check("unknown lease refused", expect(err == rpctypes.ErrLeaseNotFound, "got %v", err))
	dr, err := cli.Delete(ctx, p, clientv3.WithPrefix(), clientv3.WithPrevKV())
	check("delete prefix with prev_kv", func() error {
		if err != nil {
			return err
		}
		return expect(dr.Deleted == 3 && len(dr.PrevKvs) == 3, "deleted %d prev %d", dr.Deleted, len(dr.PrevKvs))
	}())
	// Compaction: the old revision is gone, and says so.
	cr, err := cli.Put(ctx, p+"compacted", "v")
	if err == nil {
		_, err = cli.Compact(ctx, cr.Header.Revision)
	}
	check("compact", err)
	_, err = cli.Get(ctx, p+"a", clientv3.WithRev(r1.Header.Revision))
	check("get below the compacted revision", expect(err == rpctypes.ErrCompacted, "got %v", err))
	_, err = cli.Get(ctx, p+"a", clientv3.WithRev(cr.Header.Revision+1000))
	check("get at a future revision", expect(err == rpctypes.ErrFutureRev, "got %v", err))
}

func watch(cli, other *clientv3.Client) {
	p := "go/watch/"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := cli.Put(timeout(5*time.Second), p+"a", "1")
	if err != nil {
		check("watch setup", err)
		return
	}
	cli.Put(timeout(5*time.Second), p+"b", "2")
	cli.Delete(timeout(5*time.Second), p+"a")
	// Replay from a revision, on the other member too.
	for name, c := range map[string]*clientv3.Client{"": cli, " on another member": other} {
		wch := c.Watch(ctx, p, clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision), clientv3.WithPrevKV())
		evs, err := nextEvents(wch, 3)
		check("watch replays from a revision"+name, func() error {
			if err != nil {
				return err
			}
			return expect(evs[0].Type == mvccpb.PUT && string(evs[0].Kv.Key) == p+"a" &&
				evs[1].Type == mvccpb.PUT && string(evs[1].Kv.Key) == p+"b" &&
				evs[2].Type == mvccpb.DELETE && evs[2].PrevKv != nil && string(evs[2].PrevKv.Value) == "1" &&
				evs[2].Kv.ModRevision == first.Header.Revision+2, "got %v", evs)
		}())
	}
	// Live events, filters, created notification, require-leader.
	wctx := clientv3.WithRequireLeader(ctx)
	live := cli.Watch(wctx, p+"live", clientv3.WithCreatedNotify(), clientv3.WithFilterDelete())
	created := <-live
	check("created notification", expect(created.Created && created.Header.Revision > 0, "got %+v", created))
	go func() {
		cli.Put(timeout(5*time.Second), p+"live", "x")
		cli.Delete(timeout(5*time.Second), p+"live")
		cli.Put(timeout(5*time.Second), p+"live", "y")
	}()
	evs, err := nextEvents(live, 2)
	check("live events without deletes", func() error {
		if err != nil {
			return err
		}
		return expect(string(evs[0].Kv.Value) == "x" && string(evs[1].Kv.Value) == "y" &&
			evs[1].Kv.ModRevision == evs[0].Kv.ModRevision+2, "got %v", evs)
	}())
	// Progress: a requested notification at the current revision.
	prog := cli.Watch(ctx, p+"quiet", clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	<-prog
	err = cli.RequestProgress(ctx)
	check("request progress", err)
	select {
	case w := <-prog:
		check("progress notification", expect(w.IsProgressNotify() && w.Header.Revision > first.Header.Revision,
			"got %+v", w))
	case <-time.After(10 * time.Second):
		check("progress notification", fmt.Errorf("none within 10 s"))
	}
	// A watch from a compacted revision is cancelled with the compaction revision.
	cr, _ := cli.Put(timeout(5*time.Second), p+"c", "v")
	_, err = cli.Compact(timeout(5*time.Second), cr.Header.Revision)
	check("compact for the watch", err)
	old := cli.Watch(ctx, p, clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
	select {
	case w := <-old:
		check("watch from a compacted revision", expect(w.Err() == rpctypes.ErrCompacted &&
			w.CompactRevision == cr.Header.Revision && w.Canceled, "got err %v compact %d", w.Err(), w.CompactRevision))
	case <-time.After(10 * time.Second):
		check("watch from a compacted revision", fmt.Errorf("no answer within 10 s"))
	}
}

func lease(cli *clientv3.Client) {
	ctx := timeout(30 * time.Second)
	p := "go/lease/"
	g, err := cli.Grant(ctx, 30)
	check("grant", err)
	if err != nil {
		return
	}
	_, err = cli.Put(ctx, p+"k", "v", clientv3.WithLease(g.ID))
	check("put with lease", err)
	ttl, err := cli.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	check("time to live with keys", func() error {
		if err != nil {
			return err
		}
		return expect(ttl.GrantedTTL == 30 && ttl.TTL > 25 && len(ttl.Keys) == 1 && string(ttl.Keys[0]) == p+"k",
			"got %+v", ttl)
	}())
	ka, err := cli.KeepAliveOnce(ctx, g.ID)
	check("keep alive once", func() error {
		if err != nil {
			return err
		}
		return expect(ka.TTL == 30, "ttl %d", ka.TTL)
	}())
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := cli.KeepAlive(kctx, g.ID)
	check("keep alive stream", func() error {
		if err != nil {
			return err
		}
		select {
		case r := <-ch:
			return expect(r != nil && r.ID == g.ID && r.TTL == 30, "got %+v", r)
		case <-time.After(10 * time.Second):
			return fmt.Errorf("no keep-alive response within 10 s")
		}
	}())
	kcancel()
	ls, err := cli.Leases(ctx)
	check("leases", func() error {
		if err != nil {
			return err
		}
		for _, l := range ls.Leases {
			if l.ID == g.ID {
				return nil
			}
		}
		return fmt.Errorf("%x not in %v", g.ID, ls.Leases)
	}())
	_, err = cli.Revoke(ctx, g.ID)
	check("revoke", err)
	gr, err := cli.Get(ctx, p+"k")
	check("revoked lease's key deleted", func() error {
		if err != nil {
			return err
		}
		return expect(gr.Count == 0, "count %d", gr.Count)
	}())
	_, err = cli.Revoke(ctx, g.ID)
	check("revoke again refused", expect(err == rpctypes.ErrLeaseNotFound, "got %v", err))
	_, err = cli.KeepAliveOnce(ctx, g.ID)
	check("keep alive of a revoked lease refused", expect(err == rpctypes.ErrLeaseNotFound, "got %v", err))
	_, err = cli.Grant(ctx, 9000000001)
	check("too large TTL refused", expect(err == rpctypes.ErrLeaseTTLTooLarge, "got %v", err))
	// Expiry: the key goes, and a watch sees the delete.
	short, err := cli.Grant(ctx, 2)
	if err == nil {
		_, err = cli.Put(ctx, p+"short", "v", clientv3.WithLease(short.ID))
	}
	check("short lease", err)
	if err != nil {
		return
	}
	wch := cli.Watch(ctx, p+"short")
	start := time.Now()
	evs, err := nextEvents(wch, 1)
	check("expiry deletes the key", func() error {
		if err != nil {
			return err
		}
		return expect(evs[0].Type == mvccpb.DELETE && time.Since(start) < 9*time.Second, "got %v after %v",
			evs, time.Since(start))
	}())
}

func recipes(cli, other *clientv3.Client) {
	p := "go/recipes/"
	s1, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	check("session", err)
	if err != nil {
		return
	}
	s2, err := concurrency.NewSession(other, concurrency.WithTTL(5))
	check("second session", err)
	if err != nil {
		return
	}
	m1, m2 := concurrency.NewMutex(s1, p+"lock"), concurrency.NewMutex(s2, p+"lock")
	check("lock", m1.Lock(timeout(10*time.Second)))
	got := make(chan error, 1)
	go func() { got <- m2.Lock(timeout(20 * time.Second)) }()
	select {
	case err := <-got:
		check("contended lock waits", fmt.Errorf("acquired while held: %v", err))
	case <-time.After(1 * time.Second):
		check("contended lock waits", nil)
	}
	check("unlock", m1.Unlock(timeout(10*time.Second)))
	select {
	case err := <-got:
		check("waiter acquires after unlock", err)
	case <-time.After(10 * time.Second):
		check("waiter acquires after unlock", fmt.Errorf("not within 10 s"))
	}
	// A holder whose session lease expires loses the lock.
	s3, err := concurrency.NewSession(cli, concurrency.WithTTL(2))
	check("short session", err)
	if err == nil {
		m3 := concurrency.NewMutex(s3, p+"lock")
		go func() { got <- m3.Lock(timeout(30 * time.Second)) }()
		check("release for the short session", m2.Unlock(timeout(10*time.Second)))
		select {
		case err := <-got:
			check("short session acquires", err)
		case <-time.After(10 * time.Second):
			check("short session acquires", fmt.Errorf("not within 10 s"))
		}
		s3.Orphan() // keep-alives stop; the lease expires
		m4 := concurrency.NewMutex(s1, p+"lock")
		start := time.Now()
		err = m4.Lock(timeout(20 * time.Second))
		check("lock freed by the holder's lease expiry", func() error {
			if err != nil {
				return err
			}
			return expect(time.Since(start) < 12*time.Second, "took %v", time.Since(start))
		}())
		m4.Unlock(timeout(10 * time.Second))
	}
	// Election: campaign, observe, resign, the next candidate leads.
	e1, e2 := concurrency.NewElection(s1, p+"election"), concurrency.NewElection(s2, p+"election")
	check("campaign", e1.Campaign(timeout(10*time.Second), "one"))
	octx, ocancel := context.WithCancel(context.Background())
	defer ocancel()
	obs := e2.Observe(octx)
	select {
	case r := <-obs:
		check("observe the leader", expect(len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "one", "got %v", r.Kvs))
	case <-time.After(10 * time.Second):
		check("observe the leader", fmt.Errorf("nothing within 10 s"))
	}
	check("proclaim", e1.Proclaim(timeout(10*time.Second), "one again"))
	campaigned := make(chan error, 1)
	go func() { campaigned <- e2.Campaign(timeout(30*time.Second), "two") }()
	time.Sleep(500 * time.Millisecond)
	check("resign", e1.Resign(timeout(10*time.Second)))
	select {
	case err := <-campaigned:
		check("next candidate elected", err)
	case <-time.After(10 * time.Second):
		check("next candidate elected", fmt.Errorf("not within 10 s"))
	}
	l, err := e1.Leader(timeout(10 * time.Second))
	check("leader", func() error {
		if err != nil {
			return err
		}
		return expect(string(l.Kvs[0].Value) == "two", "got %s", l.Kvs[0].Value)
	}())
	// STM: concurrent read-modify-write transactions, each applied once.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := 0; g < 4; g++ {
		c := cli
		if g%2 == 1 {
			c = other
		}
		wg.Add(1)
		go func(c *clientv3.Client) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				_, err := concurrency.NewSTM(c, func(stm concurrency.STM) error {
					n, _ := strconv.Atoi(stm.Get(p + "counter"))
					stm.Put(p+"counter", strconv.Itoa(n+1))
					return nil
				})
				errs <- err
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			check("stm", err)
			return
		}
	}
	gr, err := cli.Get(timeout(5*time.Second), p+"counter")
	check("stm increments each applied once", func() error {
		if err != nil {
			return err
		}
		return expect(string(gr.Kvs[0].Value) == "40", "counter %s", gr.Kvs[0].Value)
	}())
	s1.Close()
	s2.Close()
}

func maintenance(cli *clientv3.Client, endpoint string) {
	ctx := timeout(10 * time.Second)
	st, err := cli.Status(ctx, endpoint)
	check("status", func() error {
		if err != nil {
			return err
		}
		return expect(st.Leader != 0 && st.RaftIndex > 0 && st.Version != "", "got %+v", st)
	}())
	ml, err := cli.MemberList(ctx)
	check("member list", func() error {
		if err != nil {
			return err
		}
		return expect(len(ml.Members) > 0 && len(ml.Members[0].ClientURLs) > 0, "got %v", ml.Members)
	}())
	al, err := cli.AlarmList(ctx)
	check("alarm list", func() error {
		if err != nil {
			return err
		}
		return expect(len(al.Alarms) == 0, "got %v", al.Alarms)
	}())
	_, err = cli.HashKV(ctx, endpoint, 0)
	check("hash kv", err)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Println("usage: clientv3_check ENDPOINT OTHER_ENDPOINT")
		os.Exit(2)
	}
	cli, other := client(os.Args[1]), client(os.Args[2])
	defer cli.Close()
	defer other.Close()
	// Clean slate (the same program runs against etcd first).
	cli.Delete(timeout(5*time.Second), "go/", clientv3.WithPrefix())
	kv(cli)
	watch(cli, other)
	lease(cli)
	recipes(cli, other)
	maintenance(cli, os.Args[1])
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
