// Anchor benchmark: the containerd Go client, in-process, against a private containerd.
// benchmarks/run.py runs it as a reference when built into .cache/gobench (docs/benchmarks.rst):
//   GOPATH=/usr/share/gocode GO111MODULE=off go build -o .cache/gobench ./benchmarks/gobench
// Measures the same work as the project's benchmark: lifecycle of a `true` container,
// exec latency, and stdout throughput. Built with Debian's golang + containerd sources.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func loadSpec(path string, args []string) *specs.Spec {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		panic(err)
	}
	s.Process.Args = args
	return &s
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func main() {
	addr := flag.String("a", "/tmp/ctd/containerd.sock", "address")
	specPath := flag.String("spec", "/tmp/bundle/true.json", "base spec")
	n := flag.Int("n", 20, "iterations")
	mode := flag.String("mode", "lifecycle", "lifecycle|exec|stdout")
	mb := flag.Int("mb", 1024, "MiB for stdout mode")
	flag.Parse()
	client, err := containerd.New(*addr)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), "gobench")
	var ds []time.Duration
	switch *mode {
	case "lifecycle":
		for i := 0; i < *n; i++ {
			t0 := time.Now()
			id := fmt.Sprintf("gl%d-%d", os.Getpid(), i)
			c, err := client.NewContainer(ctx, id, containerd.WithSpec(loadSpec(*specPath, []string{"true"})), containerd.WithRuntime("io.containerd.runc.v2", nil))
			if err != nil {
				panic(err)
			}
			t, err := c.NewTask(ctx, cio.NullIO)
			if err != nil {
				panic(err)
			}
			ch, _ := t.Wait(ctx)
			if err := t.Start(ctx); err != nil {
				panic(err)
			}
			<-ch
			t.Delete(ctx)
			c.Delete(ctx)
			ds = append(ds, time.Since(t0))
		}
		fmt.Printf("go lifecycle median_ms=%.1f n=%d\n", float64(median(ds).Microseconds())/1000, *n)
	case "exec":
		id := fmt.Sprintf("ge%d", os.Getpid())
		c, err := client.NewContainer(ctx, id, containerd.WithSpec(loadSpec(*specPath, []string{"sleep", "1000"})), containerd.WithRuntime("io.containerd.runc.v2", nil))
		if err != nil {
			panic(err)
		}
		t, _ := c.NewTask(ctx, cio.NullIO)
		t.Start(ctx)
		for i := 0; i < *n; i++ {
			t0 := time.Now()
			ps := loadSpec(*specPath, []string{"true"}).Process
			p, err := t.Exec(ctx, fmt.Sprintf("x%d", i), ps, cio.NullIO)
			if err != nil {
				panic(err)
			}
			ch, _ := p.Wait(ctx)
			p.Start(ctx)
			<-ch
			p.Delete(ctx)
			ds = append(ds, time.Since(t0))
		}
		t.Kill(ctx, syscall.SIGKILL)
		ch, _ := t.Wait(ctx)
		<-ch
		t.Delete(ctx)
		c.Delete(ctx, containerd.WithSnapshotCleanup)
		fmt.Printf("go exec median_ms=%.1f n=%d\n", float64(median(ds).Microseconds())/1000, *n)
	case "stdout":
		id := fmt.Sprintf("gs%d", os.Getpid())
		c, err := client.NewContainer(ctx, id, containerd.WithSpec(loadSpec(*specPath, []string{"dd", "if=/dev/zero", "bs=1M", fmt.Sprintf("count=%d", *mb)}), oci.WithDefaultPathEnv), containerd.WithRuntime("io.containerd.runc.v2", nil))
		if err != nil {
			panic(err)
		}
		cw := &countW{}
		t0 := time.Now()
		t, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, cw, io.Discard)))
		if err != nil {
			panic(err)
		}
		ch, _ := t.Wait(ctx)
		t.Start(ctx)
		<-ch
		t.Delete(ctx)
		el := time.Since(t0)
		c.Delete(ctx)
		fmt.Printf("go stdout MBps=%.0f bytes=%d\n", float64(cw.n)/el.Seconds()/1e6, cw.n)
	}
}

type countW struct{ n int64 }

func (c *countW) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
