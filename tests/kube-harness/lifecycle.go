package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// shutdownContext is cancelled on the first SIGTERM/SIGINT or when the parent
// process dies. A second signal, or the shutdown taking longer than grace,
// ends the process at once.
//
// Parent death is detected by watching getppid() rather than with
// PR_SET_PDEATHSIG: the kernel sends the death signal when the *thread* that
// forked us exits, and a Rust test (or tokio's blocking pool) often spawns
// from a thread that ends long before the process does.
func shutdownContext(grace time.Duration) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	parent := os.Getppid()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	begin := func(why string) {
		klog.InfoS("kube-harness: shutting down", "reason", why)
		cancel()
		go func() {
			time.Sleep(grace)
			klog.ErrorS(nil, "kube-harness: shutdown took too long, exiting", "grace", grace)
			klog.Flush()
			os.Exit(1)
		}()
	}

	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case s := <-sigs:
				begin("signal " + s.String())
				<-sigs
				klog.ErrorS(nil, "kube-harness: second signal, exiting now")
				klog.Flush()
				os.Exit(1)
			case <-tick.C:
				if parent != 1 && os.Getppid() != parent {
					begin("parent process exited")
					<-sigs
					klog.Flush()
					os.Exit(1)
				}
			}
		}
	}()
	return ctx
}
