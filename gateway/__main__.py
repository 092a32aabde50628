from gateway.cli import main
import sys
sys.exit(main())
